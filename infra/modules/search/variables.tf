variable "domain_name" {
  description = "Name of the OpenSearch Service domain (3-28 characters)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,27}$", var.domain_name))
    error_message = "domain_name must be 3-28 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the domain."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like \"eu-west-1\"."
  }
}

variable "account_id" {
  description = "AWS account ID (12 digits); used to build the domain and log-group ARNs in policies."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be exactly 12 digits."
  }
}

variable "engine_version" {
  description = "OpenSearch engine version, e.g. \"OpenSearch_2.19\"."
  type        = string
  default     = "OpenSearch_2.19"

  validation {
    condition     = can(regex("^OpenSearch_[0-9]+\\.[0-9]+$", var.engine_version))
    error_message = "engine_version must look like \"OpenSearch_2.19\"."
  }
}

variable "instance_type" {
  description = "Data node instance type, e.g. \"r7g.large.search\"."
  type        = string
  default     = "r7g.large.search"

  validation {
    condition     = endswith(var.instance_type, ".search")
    error_message = "instance_type must be an OpenSearch Service instance type (ending in \".search\")."
  }
}

variable "instance_count" {
  description = "Number of data nodes: 1, or an even number spread over two availability zones."
  type        = number
  default     = 2

  validation {
    condition     = var.instance_count >= 1 && var.instance_count <= 80 && floor(var.instance_count) == var.instance_count && (var.instance_count == 1 || var.instance_count % 2 == 0)
    error_message = "instance_count must be 1 or an even number up to 80 (two zones hold the same number of nodes)."
  }
}

variable "dedicated_master_count" {
  description = "Number of dedicated cluster-manager nodes: 0 (none), 3 or 5."
  type        = number
  default     = 0

  validation {
    condition     = contains([0, 3, 5], var.dedicated_master_count)
    error_message = "dedicated_master_count must be 0, 3 or 5."
  }
}

variable "dedicated_master_type" {
  description = "Instance type of the dedicated cluster-manager nodes (used when dedicated_master_count > 0)."
  type        = string
  default     = "m7g.large.search"

  validation {
    condition     = endswith(var.dedicated_master_type, ".search")
    error_message = "dedicated_master_type must be an OpenSearch Service instance type (ending in \".search\")."
  }
}

variable "volume_size_gb" {
  description = "gp3 EBS volume size per data node, in GiB."
  type        = number
  default     = 100

  validation {
    condition     = var.volume_size_gb >= 10 && var.volume_size_gb <= 24576
    error_message = "volume_size_gb must be between 10 and 24576."
  }
}

variable "tls_security_policy" {
  description = "TLS policy of the HTTPS endpoint. Only TLS 1.2+ policies are accepted."
  type        = string
  default     = "Policy-Min-TLS-1-2-PFS-2023-10"

  validation {
    condition     = contains(["Policy-Min-TLS-1-2-PFS-2023-10", "Policy-Min-TLS-1-2-2019-07"], var.tls_security_policy)
    error_message = "tls_security_policy must be Policy-Min-TLS-1-2-PFS-2023-10 or Policy-Min-TLS-1-2-2019-07."
  }
}

variable "vpc_id" {
  description = "VPC the domain's network interfaces are placed in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the domain; the first one (single node) or the first two (zone awareness) are used."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids must list at least two private subnets."
  }
}

variable "client_security_group_ids" {
  description = "Security groups allowed to reach the domain on 443, keyed by a static name (e.g. { airflow = sg-... })."
  type        = map(string)
  default     = {}
}

variable "master_user_arn" {
  description = "IAM role ARN that is the fine-grained access control master user of the domain."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", var.master_user_arn))
    error_message = "master_user_arn must be an IAM role ARN."
  }
}

variable "client_role_arns" {
  description = "IAM role ARNs allowed to send HTTP requests to the domain (the domain access policy); fine-grained access control still applies."
  type        = list(string)

  validation {
    condition     = length(var.client_role_arns) > 0 && alltrue([for a in var.client_role_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", a))])
    error_message = "client_role_arns must be a non-empty list of IAM role ARNs (never \"*\")."
  }
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the domain at rest and its log groups."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the domain's CloudWatch log groups, in days."
  type        = number
  default     = 90

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ...)."
  }
}

variable "create_service_linked_role" {
  description = "Create the AWSServiceRoleForAmazonOpenSearchService role. Needed once per account before the first VPC domain; fails if it already exists."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags added to every resource of the module (on top of the provider's default tags)."
  type        = map(string)
  default     = {}
}
