variable "name" {
  description = "Name prefix, e.g. \"lmindexer-prod\"."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,39}$", var.name))
    error_message = "name must be 2-40 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the GPU workers."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like \"eu-west-1\"."
  }
}

variable "account_id" {
  description = "AWS account ID (12 digits); used to build ARNs in the job role policy."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be exactly 12 digits."
  }
}

variable "vpc_id" {
  description = "VPC the GPU instances run in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets the GPU instances may be launched in."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 1
    error_message = "subnet_ids must list at least one private subnet."
  }
}

variable "instance_types" {
  description = "GPU instance types the compute environment may launch (NVIDIA g/p families)."
  type        = list(string)
  default     = ["g5.xlarge", "g5.2xlarge", "g6.xlarge", "g6.2xlarge"]

  validation {
    condition     = length(var.instance_types) > 0 && alltrue([for t in var.instance_types : can(regex("^(g4dn|g5|g6|g6e|gr6|p3|p3dn|p4d|p4de|p5|p5e|p5en)\\.[0-9a-z]+$", t))])
    error_message = "instance_types must be NVIDIA GPU instance types such as \"g5.xlarge\" or \"p4d.24xlarge\"."
  }
}

variable "max_vcpus" {
  description = "Ceiling of the compute environment in vCPUs (it scales to zero when no job waits)."
  type        = number
  default     = 32

  validation {
    condition     = var.max_vcpus >= 4 && floor(var.max_vcpus) == var.max_vcpus
    error_message = "max_vcpus must be a whole number, at least 4."
  }
}

variable "use_spot" {
  description = "Run on Spot capacity (cheaper; an attempt lost to an interruption is retried, see job_attempts)."
  type        = bool
  default     = false
}

variable "job_vcpus" {
  description = "vCPUs reserved per job."
  type        = number
  default     = 4

  validation {
    condition     = var.job_vcpus >= 1 && floor(var.job_vcpus) == var.job_vcpus
    error_message = "job_vcpus must be a whole number, at least 1."
  }
}

variable "job_memory_mib" {
  description = "Memory reserved per job, in MiB (leave headroom below the instance's total for the ECS agent)."
  type        = number
  default     = 14336

  validation {
    condition     = var.job_memory_mib >= 1024 && floor(var.job_memory_mib) == var.job_memory_mib
    error_message = "job_memory_mib must be a whole number of MiB, at least 1024."
  }
}

variable "job_gpus" {
  description = "GPUs per job; `accelerate launch` starts one process per GPU."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 2, 4, 8], var.job_gpus)
    error_message = "job_gpus must be 1, 2, 4 or 8."
  }
}

variable "shared_memory_mib" {
  description = "Size of /dev/shm in the job container, in MiB (PyTorch data loaders and NCCL use it)."
  type        = number
  default     = 4096

  validation {
    condition     = var.shared_memory_mib >= 64
    error_message = "shared_memory_mib must be at least 64."
  }
}

variable "job_timeout_seconds" {
  description = "Wall-clock limit of one job attempt."
  type        = number
  default     = 21600

  validation {
    condition     = var.job_timeout_seconds >= 60
    error_message = "job_timeout_seconds must be at least 60."
  }
}

variable "job_attempts" {
  description = "Attempts per job; only attempts lost to the host (e.g. a Spot interruption) are retried."
  type        = number
  default     = 3

  validation {
    condition     = var.job_attempts >= 1 && var.job_attempts <= 10
    error_message = "job_attempts must be between 1 and 10."
  }
}

variable "root_volume_size_gb" {
  description = "Encrypted root volume of each GPU instance, in GiB (image layers, model snapshots, data shards)."
  type        = number
  default     = 200

  validation {
    condition     = var.root_volume_size_gb >= 50
    error_message = "root_volume_size_gb must be at least 50."
  }
}

variable "image_tag" {
  description = "Tag of the indexer image in the ECR repository the jobs run (tags are immutable, so never \"latest\")."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid image tag other than \"latest\"."
  }
}

variable "image_retention_count" {
  description = "How many tagged indexer images ECR keeps."
  type        = number
  default     = 20

  validation {
    condition     = var.image_retention_count >= 1
    error_message = "image_retention_count must be at least 1."
  }
}

variable "hub_offline" {
  description = "Set HF_HUB_OFFLINE=1 in the jobs (the backbone then comes from the image or S3, not the Hugging Face hub)."
  type        = bool
  default     = true
}

variable "catalogue_bucket_name" {
  description = "Catalogue bucket the jobs read staged rows from and write snapshots and ID tables to."
  type        = string
}

variable "prefixes" {
  description = "Key prefixes of the catalogue bucket layout."
  type = object({
    incoming   = string
    quarantine = string
    staged     = string
    models     = string
    ids        = string
    state      = string
  })
}

variable "kms_key_arn" {
  description = "KMS key for the image repository, the instances' volumes and the job log group."
  type        = string
}

variable "kms_key_alias" {
  description = "Alias of that key (\"alias/...\"); the job role may use only the key carrying it."
  type        = string

  validation {
    condition     = startswith(var.kms_key_alias, "alias/")
    error_message = "kms_key_alias must start with \"alias/\"."
  }
}

variable "log_retention_days" {
  description = "Retention of the job log group, in days."
  type        = number
  default     = 90

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ...)."
  }
}

variable "tags" {
  description = "Tags added to every resource of the module, including the instances Batch launches."
  type        = map(string)
  default     = {}
}
