# Everything the Airflow connections and variables, the CI that ships code, and the image build need.

output "region" {
  description = "AWS region of the deployment."
  value       = var.region
}

output "catalogue_bucket" {
  description = "Catalogue bucket (incoming/, quarantine/, staged/, models/, ids/, state/)."
  value       = module.storage.catalogue_bucket_name
}

output "artifact_bucket" {
  description = "Artifact bucket MWAA reads dags/, plugins.zip and requirements.txt from."
  value       = module.storage.artifact_bucket_name
}

output "s3_prefixes" {
  description = "Layout of the catalogue bucket."
  value       = module.storage.prefixes
}

output "kms_key_arn" {
  description = "Platform KMS key (SSE-KMS of both buckets)."
  value       = module.storage.kms_key_arn
}

output "vpc_id" {
  description = "VPC of the platform."
  value       = module.network.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets of the platform."
  value       = module.network.private_subnet_ids
}

output "search_endpoint" {
  description = "HTTPS host of the OpenSearch domain (reachable from inside the VPC)."
  value       = module.search.endpoint
}

output "search_dashboards_endpoint" {
  description = "OpenSearch Dashboards host and path (reachable from inside the VPC)."
  value       = module.search.dashboards_endpoint
}

output "search_domain_arn" {
  description = "ARN of the OpenSearch domain."
  value       = module.search.domain_arn
}

output "mwaa_environment_name" {
  description = "Name of the MWAA environment."
  value       = module.orchestration.environment_name
}

output "mwaa_webserver_url" {
  description = "Host of the Airflow UI."
  value       = module.orchestration.webserver_url
}

output "mwaa_execution_role_arn" {
  description = "Role every Airflow task runs as (the search domain's master user unless overridden)."
  value       = module.orchestration.execution_role_arn
}

output "gpu_job_queue" {
  description = "AWS Batch job queue of the GPU tasks."
  value       = module.gpu_workers.job_queue_name
}

output "gpu_job_definition" {
  description = "AWS Batch job definition of the indexer (submit by name for the latest revision)."
  value       = module.gpu_workers.job_definition_name
}

output "gpu_job_log_group" {
  description = "CloudWatch log group of the indexer jobs."
  value       = module.gpu_workers.log_group_name
}

output "indexer_image_repository" {
  description = "ECR repository to push the GPU indexer image to."
  value       = module.gpu_workers.repository_url
}

output "indexer_image" {
  description = "Image reference the job definition runs (repository:gpu_image_tag)."
  value       = module.gpu_workers.image
}

output "airflow_connections" {
  description = "Airflow connections as JSON strings, ready for `airflow connections add --conn-json` or a Secrets Manager secret under airflow/connections/<id>. No credentials: tasks use the execution role."
  value = {
    aws_default = jsonencode({
      conn_type = "aws"
      extra     = { region_name = var.region }
    })
    lmindexer_search = jsonencode({
      conn_type = "opensearch"
      host      = module.search.endpoint
      port      = 443
      schema    = "https"
      extra     = { use_ssl = true, verify_certs = true, aws_auth = "sigv4", aws_region = var.region, aws_service = "es" }
    })
  }
}

output "airflow_variables" {
  description = "Airflow variables the DAGs read (name => value)."
  value = {
    lmindexer_catalogue_bucket  = module.storage.catalogue_bucket_name
    lmindexer_s3_prefixes       = jsonencode(module.storage.prefixes)
    lmindexer_gpu_backend       = "batch"
    lmindexer_batch_job_queue   = module.gpu_workers.job_queue_name
    lmindexer_batch_job_def     = module.gpu_workers.job_definition_name
    lmindexer_batch_log_group   = module.gpu_workers.log_group_name
    lmindexer_search_domain_arn = module.search.domain_arn
  }
}

output "secrets_manager_prefixes" {
  description = "Secrets Manager prefixes the MWAA environment reads connections and variables from."
  value = {
    connections = module.orchestration.connections_secret_prefix
    variables   = module.orchestration.variables_secret_prefix
  }
}
