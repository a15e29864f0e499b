variable "name" {
  description = "Name of the Airflow environment, e.g. \"lmindexer-prod\"; prefixes its role and security group."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][0-9a-zA-Z_-]{0,39}$", var.name))
    error_message = "name must be 1-40 letters, digits, hyphens or underscores, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the environment."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like \"eu-west-1\"."
  }
}

variable "account_id" {
  description = "AWS account ID (12 digits); used to build the ARNs in the execution role policy."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be exactly 12 digits."
  }
}

variable "airflow_version" {
  description = "Apache Airflow version of the MWAA environment. The DAGs use the Airflow 3 SDK (airflow.sdk), so a 3.x version that MWAA offers."
  type        = string
  default     = "3.0.6"

  validation {
    condition     = can(regex("^3\\.[0-9]+\\.[0-9]+$", var.airflow_version))
    error_message = "airflow_version must be an Airflow 3 version such as \"3.0.6\"."
  }
}

variable "environment_class" {
  description = "MWAA environment class (scheduler/worker size)."
  type        = string
  default     = "mw1.small"

  validation {
    condition     = contains(["mw1.micro", "mw1.small", "mw1.medium", "mw1.large", "mw1.xlarge", "mw1.2xlarge"], var.environment_class)
    error_message = "environment_class must be one of mw1.micro, mw1.small, mw1.medium, mw1.large, mw1.xlarge, mw1.2xlarge."
  }
}

variable "min_workers" {
  description = "Minimum number of Celery workers."
  type        = number
  default     = 1

  validation {
    condition     = var.min_workers >= 1 && floor(var.min_workers) == var.min_workers
    error_message = "min_workers must be a whole number, at least 1."
  }
}

variable "max_workers" {
  description = "Maximum number of Celery workers (autoscaling ceiling)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_workers >= var.min_workers && var.max_workers <= 25 && floor(var.max_workers) == var.max_workers
    error_message = "max_workers must be a whole number between min_workers and 25."
  }
}

variable "schedulers" {
  description = "Number of schedulers (2-5; mw1.micro supports 1)."
  type        = number
  default     = 2

  validation {
    condition     = var.schedulers >= 1 && var.schedulers <= 5 && floor(var.schedulers) == var.schedulers
    error_message = "schedulers must be a whole number between 1 and 5."
  }
}

variable "webserver_access_mode" {
  description = "Access to the Airflow UI. Only PRIVATE_ONLY is accepted: the UI is reachable from inside the VPC (VPN, Direct Connect, a bastion or an SSM port forward), never from the internet."
  type        = string
  default     = "PRIVATE_ONLY"

  validation {
    condition     = var.webserver_access_mode == "PRIVATE_ONLY"
    error_message = "webserver_access_mode must be PRIVATE_ONLY: a PUBLIC_ONLY Airflow UI has an internet endpoint, which the policy check (airflow_ui_private) rejects."
  }
}

variable "weekly_maintenance_window_start" {
  description = "Start of the weekly maintenance window, DAY:HH:MM in UTC."
  type        = string
  default     = "SUN:03:00"

  validation {
    condition     = can(regex("^(MON|TUE|WED|THU|FRI|SAT|SUN):([01][0-9]|2[0-3]):(00|30)$", var.weekly_maintenance_window_start))
    error_message = "weekly_maintenance_window_start must look like \"SUN:03:00\" (minutes 00 or 30)."
  }
}

variable "log_level" {
  description = "Level of the Airflow logs sent to CloudWatch."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"], var.log_level)
    error_message = "log_level must be CRITICAL, ERROR, WARNING, INFO or DEBUG."
  }
}

variable "vpc_id" {
  description = "VPC of the environment."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets; MWAA uses the first two (they must be in different availability zones)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids must list at least two private subnets."
  }
}

variable "artifact_bucket_name" {
  description = "Bucket holding dags/, plugins.zip and requirements.txt."
  type        = string
}

variable "dag_s3_path" {
  description = "Key prefix of the DAG files in the artifact bucket."
  type        = string
  default     = "dags/"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+/$", var.dag_s3_path))
    error_message = "dag_s3_path must be a single-level prefix ending in \"/\", e.g. \"dags/\"."
  }
}

variable "plugins_s3_path" {
  description = "Key of plugins.zip in the artifact bucket (null: no plugins). The object must exist before the environment is created."
  type        = string
  default     = "plugins.zip"
}

variable "plugins_s3_object_version" {
  description = "S3 version of plugins.zip to run (null: the latest when the environment was last updated)."
  type        = string
  default     = null
}

variable "requirements_s3_path" {
  description = "Key of requirements.txt in the artifact bucket (null: none). The object must exist before the environment is created."
  type        = string
  default     = "requirements.txt"
}

variable "requirements_s3_object_version" {
  description = "S3 version of requirements.txt to install (null: the latest when the environment was last updated)."
  type        = string
  default     = null
}

variable "startup_script_s3_path" {
  description = "Key of an optional startup shell script in the artifact bucket (null: none)."
  type        = string
  default     = null
}

variable "airflow_configuration_options" {
  description = "Extra Airflow configuration options (section.key => value), merged over the module's defaults. Never put secrets here."
  type        = map(string)
  default     = {}
}

variable "catalogue_bucket_name" {
  description = "Catalogue bucket the pipeline tasks read and write."
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
  description = "KMS key that encrypts the environment (and the buckets it reads)."
  type        = string
}

variable "kms_key_alias" {
  description = "Alias of that key (\"alias/...\"); the execution role may use only the key carrying it."
  type        = string

  validation {
    condition     = startswith(var.kms_key_alias, "alias/")
    error_message = "kms_key_alias must start with \"alias/\"."
  }
}

variable "search_domain_name" {
  description = "OpenSearch domain the publish tasks write to."
  type        = string
}

variable "batch_job_queue_name" {
  description = "AWS Batch job queue the GPU tasks submit to."
  type        = string
}

variable "batch_job_definition_name" {
  description = "AWS Batch job definition the GPU tasks submit."
  type        = string
}

variable "batch_log_group_name" {
  description = "CloudWatch log group of the GPU jobs (read back into the Airflow task log)."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource of the module (on top of the provider's default tags)."
  type        = map(string)
  default     = {}
}
