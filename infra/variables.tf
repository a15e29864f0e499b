# --- identity of the deployment ---

variable "project" {
  description = "Project name; the first part of every resource name."
  type        = string
  default     = "lmindexer"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}$", var.project))
    error_message = "project must be 2-15 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "environment" {
  description = "Deployment environment; the second part of every resource name."
  type        = string

  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment)
    error_message = "environment must be dev, staging or prod."
  }
}

variable "region" {
  description = "AWS region to deploy to."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like \"eu-west-1\"."
  }
}

variable "account_id" {
  description = "AWS account to deploy to (12 digits). The provider refuses any other account, and every ARN in the IAM policies is built from it so the policies can be reviewed in the plan."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be exactly 12 digits."
  }
}

variable "tags" {
  description = "Extra tags for every resource (Project, Environment and ManagedBy are always set)."
  type        = map(string)
  default     = {}
}

# --- network ---

variable "availability_zones" {
  description = "Availability zones of the region to use (2 to 6; MWAA and a zone-aware search domain use the first two)."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 6 && alltrue([for az in var.availability_zones : startswith(az, var.region)])
    error_message = "availability_zones must list 2 to 6 zones of var.region, e.g. [\"eu-west-1a\", \"eu-west-1b\"]."
  }
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC (/16 to /20)."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be a valid IPv4 CIDR block."
  }
}

variable "enable_nat_gateway" {
  description = "Give the private subnets internet egress through a NAT gateway (PyPI for MWAA requirements, the Hugging Face hub). Off: AWS only, through VPC endpoints."
  type        = bool
  default     = false
}

variable "interface_endpoints" {
  description = "Interface VPC endpoints to create (service suffixes). null: everything MWAA and Batch need without internet egress."
  type        = set(string)
  default     = null

  validation {
    condition     = var.interface_endpoints == null ? true : alltrue([for s in var.interface_endpoints : can(regex("^[a-z0-9.-]+$", s)) && s != "s3"])
    error_message = "interface_endpoints must be service suffixes such as \"logs\"; S3 always has a gateway endpoint."
  }
}

# --- storage ---

variable "catalogue_bucket_name" {
  description = "Name of the catalogue bucket (null: <project>-<environment>-<account_id>-catalogue)."
  type        = string
  default     = null

  validation {
    condition     = var.catalogue_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.catalogue_bucket_name))
    error_message = "catalogue_bucket_name must be a valid S3 bucket name."
  }
}

variable "artifact_bucket_name" {
  description = "Name of the artifact bucket for Airflow code (null: <project>-<environment>-<account_id>-artifacts)."
  type        = string
  default     = null

  validation {
    condition     = var.artifact_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.artifact_bucket_name))
    error_message = "artifact_bucket_name must be a valid S3 bucket name."
  }
}

variable "s3_prefixes" {
  description = "Layout of the catalogue bucket; must match the platform's storage configuration."
  type = object({
    incoming   = optional(string, "incoming/")
    quarantine = optional(string, "quarantine/")
    staged     = optional(string, "staged/")
    models     = optional(string, "models/")
    ids        = optional(string, "ids/")
    state      = optional(string, "state/")
  })
  default = {}

  validation {
    condition     = alltrue([for p in values(var.s3_prefixes) : can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", p))])
    error_message = "Every prefix must be a relative key prefix ending in \"/\", e.g. \"incoming/\"."
  }

  validation {
    condition     = length(distinct(values(var.s3_prefixes))) == 6
    error_message = "The six prefixes must be distinct."
  }
}

variable "quarantine_retention_days" {
  description = "Days quarantined rows are kept."
  type        = number
  default     = 90

  validation {
    condition     = var.quarantine_retention_days >= 1
    error_message = "quarantine_retention_days must be at least 1."
  }
}

variable "staged_retention_days" {
  description = "Days staged rows are kept."
  type        = number
  default     = 30

  validation {
    condition     = var.staged_retention_days >= 1
    error_message = "staged_retention_days must be at least 1."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days overwritten or deleted object versions are kept."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be at least 1."
  }
}

variable "force_destroy_buckets" {
  description = "Let `terraform destroy` delete non-empty buckets (throw-away environments only)."
  type        = bool
  default     = false

  validation {
    condition     = !(var.force_destroy_buckets && var.environment == "prod")
    error_message = "force_destroy_buckets must stay false in prod."
  }
}

# --- search ---

variable "search_engine_version" {
  description = "OpenSearch engine version of the search domain."
  type        = string
  default     = "OpenSearch_2.19"

  validation {
    condition     = can(regex("^OpenSearch_[0-9]+\\.[0-9]+$", var.search_engine_version))
    error_message = "search_engine_version must look like \"OpenSearch_2.19\"."
  }
}

variable "search_instance_type" {
  description = "Instance type of the search data nodes."
  type        = string
  default     = "r7g.large.search"

  validation {
    condition     = endswith(var.search_instance_type, ".search")
    error_message = "search_instance_type must be an OpenSearch Service instance type (ending in \".search\")."
  }
}

variable "search_instance_count" {
  description = "Number of search data nodes (2 or more spreads them over two zones)."
  type        = number
  default     = 2

  validation {
    condition     = var.search_instance_count == 1 || (var.search_instance_count >= 2 && var.search_instance_count % 2 == 0)
    error_message = "search_instance_count must be 1 or an even number (the nodes are spread evenly over two zones)."
  }
}

variable "search_dedicated_master_count" {
  description = "Dedicated cluster-manager nodes: 0, 3 or 5."
  type        = number
  default     = 0

  validation {
    condition     = contains([0, 3, 5], var.search_dedicated_master_count)
    error_message = "search_dedicated_master_count must be 0, 3 or 5."
  }
}

variable "search_dedicated_master_type" {
  description = "Instance type of the dedicated cluster-manager nodes."
  type        = string
  default     = "m7g.large.search"

  validation {
    condition     = endswith(var.search_dedicated_master_type, ".search")
    error_message = "search_dedicated_master_type must be an OpenSearch Service instance type (ending in \".search\")."
  }
}

variable "search_volume_size_gb" {
  description = "EBS (gp3) size per search data node, in GiB."
  type        = number
  default     = 100

  validation {
    condition     = var.search_volume_size_gb >= 10 && var.search_volume_size_gb <= 24576
    error_message = "search_volume_size_gb must be between 10 and 24576."
  }
}

variable "search_master_user_arn" {
  description = "IAM role that is the search domain's fine-grained access control master user (null: the Airflow execution role, which creates indexes and swaps aliases)."
  type        = string
  default     = null

  validation {
    condition     = var.search_master_user_arn == null || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", var.search_master_user_arn))
    error_message = "search_master_user_arn must be an IAM role ARN (or null)."
  }
}

variable "create_opensearch_service_linked_role" {
  description = "Create the OpenSearch service-linked role (true only for the first VPC domain of the account)."
  type        = bool
  default     = false
}

# --- orchestration ---

variable "airflow_version" {
  description = "Airflow version of the MWAA environment (3.x)."
  type        = string
  default     = "3.0.6"

  validation {
    condition     = can(regex("^3\\.[0-9]+\\.[0-9]+$", var.airflow_version))
    error_message = "airflow_version must be an Airflow 3 version such as \"3.0.6\" (the DAGs use the Airflow 3 SDK)."
  }
}

variable "mwaa_environment_class" {
  description = "MWAA environment class."
  type        = string
  default     = "mw1.small"

  validation {
    condition     = contains(["mw1.micro", "mw1.small", "mw1.medium", "mw1.large", "mw1.xlarge", "mw1.2xlarge"], var.mwaa_environment_class)
    error_message = "mwaa_environment_class must be one of mw1.micro, mw1.small, mw1.medium, mw1.large, mw1.xlarge, mw1.2xlarge."
  }
}

variable "mwaa_min_workers" {
  description = "Minimum MWAA workers."
  type        = number
  default     = 1

  validation {
    condition     = var.mwaa_min_workers >= 1
    error_message = "mwaa_min_workers must be at least 1."
  }
}

variable "mwaa_max_workers" {
  description = "Maximum MWAA workers."
  type        = number
  default     = 5

  validation {
    condition     = var.mwaa_max_workers >= var.mwaa_min_workers && var.mwaa_max_workers <= 25
    error_message = "mwaa_max_workers must be between mwaa_min_workers and 25."
  }
}

variable "mwaa_webserver_access_mode" {
  description = "Access to the Airflow UI. Only PRIVATE_ONLY is accepted: the UI is reachable from inside the VPC (VPN, Direct Connect, a bastion or an SSM port forward), never from the internet."
  type        = string
  default     = "PRIVATE_ONLY"

  validation {
    condition     = var.mwaa_webserver_access_mode == "PRIVATE_ONLY"
    error_message = "mwaa_webserver_access_mode must be PRIVATE_ONLY: a PUBLIC_ONLY Airflow UI has an internet endpoint, which the policy check (airflow_ui_private) rejects."
  }
}

variable "mwaa_plugins_s3_object_version" {
  description = "S3 version of plugins.zip to run (null: latest at the last environment update)."
  type        = string
  default     = null
}

variable "mwaa_requirements_s3_object_version" {
  description = "S3 version of requirements.txt to install (null: latest at the last environment update)."
  type        = string
  default     = null
}

variable "airflow_configuration_options" {
  description = "Extra Airflow configuration options for MWAA (no secrets)."
  type        = map(string)
  default     = {}
}

# --- GPU workers ---

variable "gpu_instance_types" {
  description = "GPU instance types the Batch compute environment may launch."
  type        = list(string)
  default     = ["g5.xlarge", "g5.2xlarge", "g6.xlarge", "g6.2xlarge"]

  validation {
    condition     = length(var.gpu_instance_types) > 0 && alltrue([for t in var.gpu_instance_types : can(regex("^(g4dn|g5|g6|g6e|gr6|p3|p3dn|p4d|p4de|p5|p5e|p5en)\\.[0-9a-z]+$", t))])
    error_message = "gpu_instance_types must be NVIDIA GPU instance types such as \"g5.xlarge\"."
  }
}

variable "gpu_max_vcpus" {
  description = "vCPU ceiling of the GPU compute environment (it scales to zero)."
  type        = number
  default     = 32

  validation {
    condition     = var.gpu_max_vcpus >= var.gpu_job_vcpus
    error_message = "gpu_max_vcpus must be at least gpu_job_vcpus, or no job could ever start."
  }
}

variable "gpu_use_spot" {
  description = "Run GPU jobs on Spot capacity."
  type        = bool
  default     = false
}

variable "gpu_job_gpus" {
  description = "GPUs per indexer job."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 2, 4, 8], var.gpu_job_gpus)
    error_message = "gpu_job_gpus must be 1, 2, 4 or 8."
  }
}

variable "gpu_job_vcpus" {
  description = "vCPUs per indexer job."
  type        = number
  default     = 4

  validation {
    condition     = var.gpu_job_vcpus >= 1
    error_message = "gpu_job_vcpus must be at least 1."
  }
}

variable "gpu_job_memory_mib" {
  description = "Memory per indexer job, in MiB."
  type        = number
  default     = 14336

  validation {
    condition     = var.gpu_job_memory_mib >= 1024
    error_message = "gpu_job_memory_mib must be at least 1024."
  }
}

variable "gpu_job_timeout_seconds" {
  description = "Wall-clock limit of one indexer job attempt."
  type        = number
  default     = 21600

  validation {
    condition     = var.gpu_job_timeout_seconds >= 60
    error_message = "gpu_job_timeout_seconds must be at least 60."
  }
}

variable "gpu_image_tag" {
  description = "Tag of the indexer image the jobs run."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.gpu_image_tag)) && var.gpu_image_tag != "latest"
    error_message = "gpu_image_tag must be a valid image tag other than \"latest\" (the repository's tags are immutable)."
  }
}

# --- logs ---

variable "log_retention_days" {
  description = "Retention of the platform's CloudWatch log groups (search, GPU jobs, flow logs), in days."
  type        = number
  default     = 90

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ...)."
  }
}
