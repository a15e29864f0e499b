variable "name" {
  description = "Name prefix for every network resource, e.g. \"lmindexer-prod\"."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,39}$", var.name))
    error_message = "name must be 2-40 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region the VPC lives in; used to name the VPC endpoint services."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like \"eu-west-1\"."
  }
}

variable "account_id" {
  description = "AWS account ID (12 digits); used to build the ARNs in the flow-log role policy."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be exactly 12 digits."
  }
}

variable "cidr_block" {
  description = "IPv4 CIDR of the VPC. Private subnets are /4 slices of it, public subnets (NAT only) /8 slices at the top."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.cidr_block, 0)) && try(tonumber(split("/", var.cidr_block)[1]) >= 16 && tonumber(split("/", var.cidr_block)[1]) <= 20, false)
    error_message = "cidr_block must be a valid IPv4 CIDR with a prefix length between /16 and /20."
  }
}

variable "availability_zones" {
  description = "Availability zones to spread the subnets over (at least two; MWAA uses the first two)."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 6 && length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "availability_zones must list 2 to 6 distinct zones."
  }
}

variable "enable_nat_gateway" {
  description = "Create public subnets, an internet gateway and one NAT gateway so private workloads can reach the internet (PyPI, the Hugging Face hub). Off by default: the private subnets then reach AWS only through VPC endpoints."
  type        = bool
  default     = false
}

variable "interface_endpoints" {
  description = "AWS services reached through interface VPC endpoints (service suffixes after com.amazonaws.<region>.). S3 always gets a gateway endpoint."
  type        = set(string)
  default = [
    "airflow.api", "airflow.env", "airflow.ops",
    "ecr.api", "ecr.dkr", "ecs", "ecs-agent", "ecs-telemetry",
    "kms", "logs", "monitoring", "secretsmanager", "sqs", "sts",
  ]

  validation {
    condition     = alltrue([for s in var.interface_endpoints : can(regex("^[a-z0-9.-]+$", s)) && s != "s3"])
    error_message = "interface_endpoints must be service suffixes such as \"logs\" or \"ecr.dkr\"; S3 is handled by the gateway endpoint."
  }
}

variable "enable_flow_logs" {
  description = "Record VPC flow logs (rejected and accepted traffic) in CloudWatch Logs."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Retention of the flow-log group, in days."
  type        = number
  default     = 90

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ...)."
  }
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the flow-log group (null: CloudWatch Logs' default encryption)."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags added to every resource of the module (on top of the provider's default tags)."
  type        = map(string)
  default     = {}
}
