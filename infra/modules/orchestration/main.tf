# Orchestration: the Amazon MWAA environment (Airflow 3) that runs dags/, plugins.zip and requirements.txt from the
# artifact bucket, and its execution role. Every ARN in the role policy is built from names, so the policy is
# known at plan time and can be checked before anything is applied.

data "aws_partition" "current" {}

locals {
  partition       = data.aws_partition.current.partition
  env_arn         = "arn:${local.partition}:airflow:${var.region}:${var.account_id}:environment/${var.name}"
  artifact_arn    = "arn:${local.partition}:s3:::${var.artifact_bucket_name}"
  catalogue_arn   = "arn:${local.partition}:s3:::${var.catalogue_bucket_name}"
  logs_arn_prefix = "arn:${local.partition}:logs:${var.region}:${var.account_id}:log-group"
  batch_arn       = "arn:${local.partition}:batch:${var.region}:${var.account_id}"
  domain_arn      = "arn:${local.partition}:es:${var.region}:${var.account_id}:domain/${var.search_domain_name}"
  secret_arn      = "arn:${local.partition}:secretsmanager:${var.region}:${var.account_id}:secret"
  # Connections and variables may live in Secrets Manager under these prefixes (looked up before the metadata DB).
  connections_prefix = "airflow/connections"
  variables_prefix   = "airflow/variables"

  code_objects = compact([var.plugins_s3_path, var.requirements_s3_path, var.startup_script_s3_path])

  default_configuration = {
    "core.load_examples"     = "False"
    "secrets.backend"        = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
    "secrets.backend_kwargs" = jsonencode({ connections_prefix = local.connections_prefix, variables_prefix = local.variables_prefix })
  }
}

# --- network ---

resource "aws_security_group" "airflow" {
  name        = "${var.name}-airflow"
  description = "MWAA environment ${var.name}: its own components talk to each other; egress to AWS endpoints"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-airflow" })
}

resource "aws_vpc_security_group_ingress_rule" "self" {
  security_group_id            = aws_security_group.airflow.id
  description                  = "MWAA components (scheduler, workers, web server, metadata DB endpoint)"
  ip_protocol                  = "-1"
  referenced_security_group_id = aws_security_group.airflow.id
}

resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.airflow.id
  description       = "AWS service endpoints, the search domain and (with NAT) the internet"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

# --- execution role ---

data "aws_iam_policy_document" "assume" {
  statement {
    sid     = "MwaaAssumesForThisEnvironment"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["airflow.amazonaws.com", "airflow-env.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [local.env_arn]
    }
  }
}

data "aws_iam_policy_document" "execution" {
  # What MWAA itself needs to run the environment.
  statement {
    sid       = "PublishEnvironmentMetrics"
    actions   = ["airflow:PublishMetrics"]
    resources = [local.env_arn]
  }

  statement {
    sid       = "CheckAccountPublicAccessBlock"
    actions   = ["s3:GetAccountPublicAccessBlock"]
    resources = ["*"]
  }

  statement {
    sid = "ReadCodeBucketConfiguration"
    # The read-only bucket settings MWAA's documented policy grants as "s3:GetBucket*", named one by one so that
    # actions AWS adds under that prefix later are not granted unseen.
    actions = [
      "s3:ListBucket", "s3:GetBucketLocation", "s3:GetBucketVersioning", "s3:GetBucketPublicAccessBlock",
      "s3:GetBucketPolicyStatus", "s3:GetBucketPolicy", "s3:GetBucketAcl", "s3:GetBucketOwnershipControls",
      "s3:GetBucketObjectLockConfiguration", "s3:GetBucketLogging", "s3:GetBucketNotification",
      "s3:GetBucketTagging", "s3:GetBucketCORS", "s3:GetBucketWebsite", "s3:GetBucketRequestPayment",
    ]
    resources = [local.artifact_arn]
  }

  statement {
    sid     = "ReadAirflowCode"
    actions = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = concat(
      ["${local.artifact_arn}/${var.dag_s3_path}*"],
      [for key in local.code_objects : "${local.artifact_arn}/${key}"],
    )
  }

  statement {
    sid = "WriteAndReadAirflowLogs"
    actions = [
      "logs:CreateLogStream", "logs:CreateLogGroup", "logs:PutLogEvents", "logs:GetLogEvents",
      "logs:GetLogRecord", "logs:GetLogGroupFields", "logs:GetQueryResults",
    ]
    resources = ["${local.logs_arn_prefix}:airflow-${var.name}-*"]
  }

  statement {
    sid       = "ListLogGroups"
    actions   = ["logs:DescribeLogGroups"]
    resources = ["*"]
  }

  statement {
    sid       = "PublishMetricData"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
  }

  statement {
    sid = "CeleryQueue"
    actions = [
      "sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl",
      "sqs:ReceiveMessage", "sqs:SendMessage",
    ]
    # The Celery queue lives in an account owned by MWAA, hence the account wildcard.
    resources = ["arn:${local.partition}:sqs:${var.region}:*:airflow-celery-*"]
  }

  statement {
    sid       = "UsePlatformKeyThroughSqsAndS3"
    actions   = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey", "kms:Encrypt"]
    resources = ["arn:${local.partition}:kms:${var.region}:${var.account_id}:key/*"]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["sqs.${var.region}.amazonaws.com", "s3.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ForAnyValue:StringEquals"
      variable = "kms:ResourceAliases"
      values   = [var.kms_key_alias]
    }
  }

  # What the pipeline's tasks need.
  statement {
    sid       = "ListCatalogueLayout"
    actions   = ["s3:ListBucket"]
    resources = [local.catalogue_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = [for p in [
        var.prefixes.incoming, var.prefixes.quarantine, var.prefixes.staged,
        var.prefixes.models, var.prefixes.ids, var.prefixes.state,
      ] : "${p}*"]
    }
  }

  statement {
    sid       = "LocateCatalogueBucket"
    actions   = ["s3:GetBucketLocation"]
    resources = [local.catalogue_arn]
  }

  statement {
    sid       = "ReadDrops"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${local.catalogue_arn}/${var.prefixes.incoming}*"]
  }

  statement {
    sid     = "WriteValidationResults"
    actions = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]
    resources = [
      "${local.catalogue_arn}/${var.prefixes.quarantine}*",
      "${local.catalogue_arn}/${var.prefixes.staged}*",
    ]
  }

  statement {
    sid       = "KeepProcessingState"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${local.catalogue_arn}/${var.prefixes.state}*"]
  }

  statement {
    sid     = "ReadSnapshotsAndIdTables"
    actions = ["s3:GetObject"]
    resources = [
      "${local.catalogue_arn}/${var.prefixes.models}*",
      "${local.catalogue_arn}/${var.prefixes.ids}*",
    ]
  }

  statement {
    sid     = "SubmitGpuJobs"
    actions = ["batch:SubmitJob"]
    resources = [
      "${local.batch_arn}:job-queue/${var.batch_job_queue_name}",
      "${local.batch_arn}:job-definition/${var.batch_job_definition_name}",
      "${local.batch_arn}:job-definition/${var.batch_job_definition_name}:*",
    ]
  }

  statement {
    sid       = "StopGpuJobs"
    actions   = ["batch:TerminateJob", "batch:CancelJob"]
    resources = ["${local.batch_arn}:job/*"]
  }

  statement {
    sid = "WatchGpuJobs"
    # These Batch actions do not support resource-level permissions.
    actions   = ["batch:DescribeJobs", "batch:ListJobs"]
    resources = ["*"]
  }

  statement {
    sid       = "ReadGpuJobLogs"
    actions   = ["logs:GetLogEvents", "logs:DescribeLogStreams"]
    resources = ["${local.logs_arn_prefix}:${var.batch_log_group_name}", "${local.logs_arn_prefix}:${var.batch_log_group_name}:*"]
  }

  statement {
    sid = "PublishToSearch"
    actions = [
      "es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost", "es:ESHttpPut", "es:ESHttpPatch", "es:ESHttpDelete",
    ]
    resources = [local.domain_arn, "${local.domain_arn}/*"]
  }

  statement {
    sid     = "ReadConnectionsAndVariables"
    actions = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [
      "${local.secret_arn}:${local.connections_prefix}/*",
      "${local.secret_arn}:${local.variables_prefix}/*",
    ]
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-airflow-execution"
  description        = "Execution role of the MWAA environment ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.assume.json

  tags = var.tags
}

resource "aws_iam_role_policy" "execution" {
  name   = "airflow-environment-and-pipeline"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# --- environment ---

resource "aws_mwaa_environment" "this" {
  name               = var.name
  airflow_version    = var.airflow_version
  environment_class  = var.environment_class
  min_workers        = var.min_workers
  max_workers        = var.max_workers
  schedulers         = var.schedulers
  execution_role_arn = aws_iam_role.execution.arn
  kms_key            = var.kms_key_arn

  source_bucket_arn              = local.artifact_arn
  dag_s3_path                    = var.dag_s3_path
  plugins_s3_path                = var.plugins_s3_path
  plugins_s3_object_version      = var.plugins_s3_object_version
  requirements_s3_path           = var.requirements_s3_path
  requirements_s3_object_version = var.requirements_s3_object_version
  startup_script_s3_path         = var.startup_script_s3_path

  webserver_access_mode           = var.webserver_access_mode
  weekly_maintenance_window_start = var.weekly_maintenance_window_start
  airflow_configuration_options   = merge(local.default_configuration, var.airflow_configuration_options)

  network_configuration {
    security_group_ids = [aws_security_group.airflow.id]
    subnet_ids         = slice(var.subnet_ids, 0, 2)
  }

  logging_configuration {
    dag_processing_logs {
      enabled   = true
      log_level = var.log_level
    }
    scheduler_logs {
      enabled   = true
      log_level = var.log_level
    }
    task_logs {
      enabled   = true
      log_level = var.log_level
    }
    webserver_logs {
      enabled   = true
      log_level = var.log_level
    }
    worker_logs {
      enabled   = true
      log_level = var.log_level
    }
  }

  tags = var.tags

  # The role must carry its permissions before MWAA validates the environment.
  depends_on = [aws_iam_role_policy.execution]
}
