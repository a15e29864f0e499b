# Development: small and cheap, internet egress through NAT (MWAA installs requirements from PyPI,
# jobs may fetch the backbone from the Hugging Face hub), Spot GPUs, buckets removable on destroy.
project     = "lmindexer"
environment = "dev"
region      = "eu-west-1"
account_id  = "111111111111"

availability_zones = ["eu-west-1a", "eu-west-1b"]
vpc_cidr           = "10.40.0.0/16"
enable_nat_gateway = true
# With NAT the AWS APIs are reachable over the internet; keep only endpoints that keep traffic private and cheap.
interface_endpoints = ["ecr.api", "ecr.dkr", "logs"]

force_destroy_buckets     = true
quarantine_retention_days = 14
staged_retention_days     = 7

search_instance_type  = "t3.medium.search"
search_instance_count = 1
search_volume_size_gb = 20

mwaa_environment_class = "mw1.micro"
mwaa_min_workers       = 1
mwaa_max_workers       = 1

gpu_instance_types = ["g5.xlarge"]
gpu_max_vcpus      = 8
gpu_use_spot       = true

log_retention_days = 14

tags = {
  CostCenter = "search-platform-dev"
}
