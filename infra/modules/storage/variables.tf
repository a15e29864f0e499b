variable "name" {
  description = "Name prefix, e.g. \"lmindexer-prod\"; names the KMS key alias."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,39}$", var.name))
    error_message = "name must be 2-40 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the buckets and the key."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like \"eu-west-1\"."
  }
}

variable "account_id" {
  description = "AWS account ID (12 digits) that owns the key; its IAM policies may use the key."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be exactly 12 digits."
  }
}

variable "catalogue_bucket_name" {
  description = "Bucket for catalogue data: incoming drops, quarantined and staged rows, model snapshots, ID tables and processing state."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.catalogue_bucket_name)) && !can(regex("\\.\\.|^xn--|-s3alias$", var.catalogue_bucket_name))
    error_message = "catalogue_bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)."
  }
}

variable "artifact_bucket_name" {
  description = "Bucket the Airflow environment reads its code from: dags/, plugins.zip, requirements.txt."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.artifact_bucket_name)) && !can(regex("\\.\\.|^xn--|-s3alias$", var.artifact_bucket_name))
    error_message = "artifact_bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)."
  }
}

variable "prefixes" {
  description = "Key prefixes of the catalogue bucket layout (each ends with \"/\")."
  type = object({
    incoming   = string
    quarantine = string
    staged     = string
    models     = string
    ids        = string
    state      = string
  })

  validation {
    condition     = alltrue([for p in values(var.prefixes) : can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", p))])
    error_message = "Every prefix must be a relative key prefix ending in \"/\", e.g. \"incoming/\"."
  }
}

variable "quarantine_retention_days" {
  description = "Days after which quarantined rows (with their rejection reasons) are deleted."
  type        = number
  default     = 90

  validation {
    condition     = var.quarantine_retention_days >= 1 && floor(var.quarantine_retention_days) == var.quarantine_retention_days
    error_message = "quarantine_retention_days must be a whole number of days, at least 1."
  }
}

variable "staged_retention_days" {
  description = "Days after which staged (validated) rows are deleted; they are inputs to runs and are reproducible from the drops."
  type        = number
  default     = 30

  validation {
    condition     = var.staged_retention_days >= 1 && floor(var.staged_retention_days) == var.staged_retention_days
    error_message = "staged_retention_days must be a whole number of days, at least 1."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days a replaced or deleted object version is kept (recovery window for overwritten snapshots, ID tables and state)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1 && floor(var.noncurrent_version_retention_days) == var.noncurrent_version_retention_days
    error_message = "noncurrent_version_retention_days must be a whole number of days, at least 1."
  }
}

variable "force_destroy" {
  description = "Allow `terraform destroy` to delete non-empty buckets. Leave false outside throw-away environments."
  type        = bool
  default     = false
}

variable "kms_deletion_window_days" {
  description = "Waiting period before a scheduled deletion of the KMS key takes effect."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30."
  }
}

variable "tags" {
  description = "Tags added to every resource of the module (on top of the provider's default tags)."
  type        = map(string)
  default     = {}
}
