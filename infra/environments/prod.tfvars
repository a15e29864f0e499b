# Production: no internet egress (AWS APIs through VPC endpoints only), zone-aware search with dedicated
# cluster managers, on-demand GPUs, buckets protected from destroy.
project     = "lmindexer"
environment = "prod"
region      = "eu-west-1"
account_id  = "222222222222"

availability_zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
vpc_cidr           = "10.41.0.0/16"
enable_nat_gateway = false

quarantine_retention_days         = 90
staged_retention_days             = 30
noncurrent_version_retention_days = 30

search_instance_type          = "r7g.large.search"
search_instance_count         = 2
search_dedicated_master_count = 3
search_volume_size_gb         = 200

mwaa_environment_class     = "mw1.medium"
mwaa_min_workers           = 2
mwaa_max_workers           = 10
mwaa_webserver_access_mode = "PRIVATE_ONLY"

gpu_instance_types = ["g5.2xlarge", "g6.2xlarge", "g5.12xlarge"]
gpu_max_vcpus      = 96
gpu_use_spot       = false
gpu_job_gpus       = 1

log_retention_days = 365

tags = {
  CostCenter = "search-platform"
}
