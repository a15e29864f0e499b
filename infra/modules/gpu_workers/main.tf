# GPU workers: AWS Batch. The Airflow task on the `gpu` queue submits a job to this queue; the job's container runs
# the same `accelerate launch ...` command the local worker runs in a subprocess, on an ECS GPU-optimised instance.
# The compute environment scales from zero, so GPUs cost nothing while no training or assignment job is waiting.

data "aws_partition" "current" {}

locals {
  partition      = data.aws_partition.current.partition
  catalogue_arn  = "arn:${local.partition}:s3:::${var.catalogue_bucket_name}"
  log_group_name = "/aws/batch/${var.name}-indexer"
  names = {
    repository     = "${var.name}-indexer"
    compute        = "${var.name}-gpu"
    queue          = "${var.name}-gpu"
    job_definition = "${var.name}-indexer"
  }
}

# --- image repository ---

resource "aws_ecr_repository" "indexer" {
  name                 = local.names.repository
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.kms_key_arn
  }

  tags = var.tags
}

resource "aws_ecr_lifecycle_policy" "indexer" {
  repository = aws_ecr_repository.indexer.name
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Drop untagged layers after a week"
        selection    = { tagStatus = "untagged", countType = "sinceImagePushed", countUnit = "days", countNumber = 7 }
        action       = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the newest ${var.image_retention_count} images"
        selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = var.image_retention_count }
        action       = { type = "expire" }
      },
    ]
  })
}

# --- logs ---

resource "aws_cloudwatch_log_group" "jobs" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

# --- network ---

resource "aws_security_group" "workers" {
  name        = "${var.name}-gpu-workers"
  description = "GPU worker instances: no inbound traffic; HTTPS out to AWS endpoints (and the internet through NAT if enabled)"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-gpu-workers" })
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.workers.id
  description       = "HTTPS to S3, ECR, ECS, CloudWatch Logs"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# --- instance role (the ECS agent on each GPU instance) ---

data "aws_iam_policy_document" "instance_assume" {
  statement {
    sid     = "Ec2Assume"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name               = "${var.name}-gpu-instance"
  description        = "ECS agent on the GPU worker instances: joins the Batch cluster, pulls the image, ships logs"
  assume_role_policy = data.aws_iam_policy_document.instance_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "instance_ecs" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_instance_profile" "instance" {
  name = "${var.name}-gpu-instance"
  role = aws_iam_role.instance.name

  tags = var.tags
}

# --- job role (what the indexer code in the container may do) ---

data "aws_iam_policy_document" "job_assume" {
  statement {
    sid     = "EcsTasksAssume"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }
  }
}

data "aws_iam_policy_document" "job" {
  statement {
    sid       = "ListTrainingLayout"
    actions   = ["s3:ListBucket"]
    resources = [local.catalogue_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.prefixes.staged}*", "${var.prefixes.models}*", "${var.prefixes.ids}*"]
    }
  }

  statement {
    sid       = "ReadStagedRows"
    actions   = ["s3:GetObject"]
    resources = ["${local.catalogue_arn}/${var.prefixes.staged}*"]
  }

  statement {
    sid     = "ReadAndWriteSnapshotsAndIdTables"
    actions = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]
    resources = [
      "${local.catalogue_arn}/${var.prefixes.models}*",
      "${local.catalogue_arn}/${var.prefixes.ids}*",
    ]
  }

  statement {
    sid       = "UsePlatformKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = ["arn:${local.partition}:kms:${var.region}:${var.account_id}:key/*"]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ForAnyValue:StringEquals"
      variable = "kms:ResourceAliases"
      values   = [var.kms_key_alias]
    }
  }
}

resource "aws_iam_role" "job" {
  name               = "${var.name}-indexer-job"
  description        = "Indexer training and assignment jobs: read staged rows, write snapshots and ID tables"
  assume_role_policy = data.aws_iam_policy_document.job_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy" "job" {
  name   = "indexer-data"
  role   = aws_iam_role.job.id
  policy = data.aws_iam_policy_document.job.json
}

# --- compute ---

resource "aws_launch_template" "workers" {
  name        = "${var.name}-gpu-workers"
  description = "GPU worker hardening: IMDSv2 only and unreachable from containers, root volume encrypted with the platform key"

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-gpu-worker" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-gpu-worker" })
  }

  tags = var.tags
}

resource "aws_batch_compute_environment" "gpu" {
  compute_environment_name = local.names.compute
  type                     = "MANAGED"
  state                    = "ENABLED"
  # No service_role: Batch uses its service-linked role AWSServiceRoleForBatch.

  compute_resources {
    type                = var.use_spot ? "SPOT" : "EC2"
    allocation_strategy = var.use_spot ? "SPOT_PRICE_CAPACITY_OPTIMIZED" : "BEST_FIT_PROGRESSIVE"
    min_vcpus           = 0
    max_vcpus           = var.max_vcpus
    instance_type       = var.instance_types
    subnets             = var.subnet_ids
    security_group_ids  = [aws_security_group.workers.id]
    instance_role       = aws_iam_instance_profile.instance.arn

    ec2_configuration {
      image_type = "ECS_AL2_NVIDIA"
    }

    launch_template {
      launch_template_id = aws_launch_template.workers.id
      version            = aws_launch_template.workers.latest_version
    }

    tags = merge(var.tags, { Name = "${var.name}-gpu-worker" })
  }

  tags = var.tags

  depends_on = [aws_iam_role_policy_attachment.instance_ecs]
}

resource "aws_batch_job_queue" "gpu" {
  name     = local.names.queue
  state    = "ENABLED"
  priority = 1

  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.gpu.arn
  }

  tags = var.tags
}

resource "aws_batch_job_definition" "indexer" {
  name                  = local.names.job_definition
  type                  = "container"
  platform_capabilities = ["EC2"]
  propagate_tags        = true

  container_properties = jsonencode({
    image = "${aws_ecr_repository.indexer.repository_url}:${var.image_tag}"
    # The submitting task overrides the command with the exact `accelerate launch ...` line it would run locally;
    # the default prints the Accelerate/GPU environment, a cheap smoke test of a new image.
    command    = ["accelerate", "env"]
    jobRoleArn = aws_iam_role.job.arn
    resourceRequirements = [
      { type = "GPU", value = tostring(var.job_gpus) },
      { type = "VCPU", value = tostring(var.job_vcpus) },
      { type = "MEMORY", value = tostring(var.job_memory_mib) },
    ]
    environment = [
      { name = "AWS_DEFAULT_REGION", value = var.region },
      { name = "LMINDEXER_CATALOGUE_BUCKET", value = var.catalogue_bucket_name },
      { name = "HF_HUB_OFFLINE", value = var.hub_offline ? "1" : "0" },
      { name = "TOKENIZERS_PARALLELISM", value = "false" },
    ]
    linuxParameters = {
      initProcessEnabled = true
      sharedMemorySize   = var.shared_memory_mib
    }
    privileged = false
    ulimits    = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.jobs.name
        "awslogs-region"        = var.region
        "awslogs-stream-prefix" = "indexer"
      }
    }
  })

  retry_strategy {
    attempts = var.job_attempts

    # Retry only when the host went away (Spot reclaim, instance failure); a failing program fails the job.
    evaluate_on_exit {
      on_status_reason = "Host EC2*"
      action           = "RETRY"
    }

    evaluate_on_exit {
      on_reason = "*"
      action    = "EXIT"
    }
  }

  timeout {
    attempt_duration_seconds = var.job_timeout_seconds
  }

  tags = var.tags
}
