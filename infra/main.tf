# LMIndexer platform on AWS: the production deployment of the local demo stack.
#   network       VPC, private subnets, S3 gateway endpoint, interface endpoints (optional NAT)
#   storage       KMS key, catalogue bucket (data) and artifact bucket (Airflow code)
#   search        Amazon OpenSearch Service domain in the VPC (versioned indexes behind an alias)
#   orchestration Amazon MWAA (Airflow 3) and its execution role
#   gpu_workers   AWS Batch GPU compute environment, job queue, job definition, image repository

locals {
  name = "${var.project}-${var.environment}"

  tags = merge(var.tags, {
    Project     = var.project
    Environment = var.environment
    ManagedBy   = "terraform"
  })

  catalogue_bucket_name = coalesce(var.catalogue_bucket_name, "${local.name}-${var.account_id}-catalogue")
  artifact_bucket_name  = coalesce(var.artifact_bucket_name, "${local.name}-${var.account_id}-artifacts")
  search_domain_name    = local.name

  interface_endpoints = var.interface_endpoints != null ? var.interface_endpoints : toset([
    "airflow.api", "airflow.env", "airflow.ops",
    "ecr.api", "ecr.dkr", "ecs", "ecs-agent", "ecs-telemetry",
    "kms", "logs", "monitoring", "secretsmanager", "sqs", "sts",
  ])
}

module "network" {
  source = "./modules/network"

  name                = local.name
  region              = var.region
  account_id          = var.account_id
  cidr_block          = var.vpc_cidr
  availability_zones  = var.availability_zones
  enable_nat_gateway  = var.enable_nat_gateway
  interface_endpoints = local.interface_endpoints
  log_retention_days  = var.log_retention_days
  kms_key_arn         = module.storage.kms_key_arn
}

module "storage" {
  source = "./modules/storage"

  name                              = local.name
  region                            = var.region
  account_id                        = var.account_id
  catalogue_bucket_name             = local.catalogue_bucket_name
  artifact_bucket_name              = local.artifact_bucket_name
  prefixes                          = var.s3_prefixes
  quarantine_retention_days         = var.quarantine_retention_days
  staged_retention_days             = var.staged_retention_days
  noncurrent_version_retention_days = var.noncurrent_version_retention_days
  force_destroy                     = var.force_destroy_buckets
}

module "search" {
  source = "./modules/search"

  domain_name                = local.search_domain_name
  region                     = var.region
  account_id                 = var.account_id
  engine_version             = var.search_engine_version
  instance_type              = var.search_instance_type
  instance_count             = var.search_instance_count
  dedicated_master_count     = var.search_dedicated_master_count
  dedicated_master_type      = var.search_dedicated_master_type
  volume_size_gb             = var.search_volume_size_gb
  vpc_id                     = module.network.vpc_id
  subnet_ids                 = module.network.private_subnet_ids
  client_security_group_ids  = { airflow = module.orchestration.security_group_id }
  master_user_arn            = coalesce(var.search_master_user_arn, module.orchestration.execution_role_arn)
  client_role_arns           = [module.orchestration.execution_role_arn]
  kms_key_arn                = module.storage.kms_key_arn
  log_retention_days         = var.log_retention_days
  create_service_linked_role = var.create_opensearch_service_linked_role
}

module "orchestration" {
  source = "./modules/orchestration"

  name                           = local.name
  region                         = var.region
  account_id                     = var.account_id
  airflow_version                = var.airflow_version
  environment_class              = var.mwaa_environment_class
  min_workers                    = var.mwaa_min_workers
  max_workers                    = var.mwaa_max_workers
  webserver_access_mode          = var.mwaa_webserver_access_mode
  plugins_s3_object_version      = var.mwaa_plugins_s3_object_version
  requirements_s3_object_version = var.mwaa_requirements_s3_object_version
  airflow_configuration_options  = var.airflow_configuration_options
  vpc_id                         = module.network.vpc_id
  subnet_ids                     = module.network.private_subnet_ids
  artifact_bucket_name           = module.storage.artifact_bucket_name
  catalogue_bucket_name          = module.storage.catalogue_bucket_name
  prefixes                       = module.storage.prefixes
  kms_key_arn                    = module.storage.kms_key_arn
  kms_key_alias                  = module.storage.kms_key_alias
  search_domain_name             = local.search_domain_name
  batch_job_queue_name           = module.gpu_workers.job_queue_name
  batch_job_definition_name      = module.gpu_workers.job_definition_name
  batch_log_group_name           = module.gpu_workers.log_group_name
}

module "gpu_workers" {
  source = "./modules/gpu_workers"

  name                  = local.name
  region                = var.region
  account_id            = var.account_id
  vpc_id                = module.network.vpc_id
  subnet_ids            = module.network.private_subnet_ids
  instance_types        = var.gpu_instance_types
  max_vcpus             = var.gpu_max_vcpus
  use_spot              = var.gpu_use_spot
  job_gpus              = var.gpu_job_gpus
  job_vcpus             = var.gpu_job_vcpus
  job_memory_mib        = var.gpu_job_memory_mib
  job_timeout_seconds   = var.gpu_job_timeout_seconds
  image_tag             = var.gpu_image_tag
  hub_offline           = !var.enable_nat_gateway
  catalogue_bucket_name = module.storage.catalogue_bucket_name
  prefixes              = module.storage.prefixes
  kms_key_arn           = module.storage.kms_key_arn
  kms_key_alias         = module.storage.kms_key_alias
  log_retention_days    = var.log_retention_days
  tags                  = local.tags
}
