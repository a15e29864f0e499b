# Search: an Amazon OpenSearch Service domain inside the VPC. Encrypted at rest (KMS) and between nodes,
# HTTPS only with a TLS 1.2+ policy, fine-grained access control with an IAM role as master user (no passwords),
# and all four log types in CloudWatch Logs.

data "aws_partition" "current" {}

locals {
  partition       = data.aws_partition.current.partition
  domain_arn      = "arn:${local.partition}:es:${var.region}:${var.account_id}:domain/${var.domain_name}"
  zone_aware      = var.instance_count >= 2
  log_group_root  = "/aws/opensearch/${var.domain_name}"
  log_types       = toset(["INDEX_SLOW_LOGS", "SEARCH_SLOW_LOGS", "ES_APPLICATION_LOGS", "AUDIT_LOGS"])
  log_group_names = { for t in local.log_types : t => "${local.log_group_root}/${lower(t)}" }
}

resource "aws_iam_service_linked_role" "opensearch" {
  count = var.create_service_linked_role ? 1 : 0

  aws_service_name = "opensearchservice.amazonaws.com"
  description      = "Lets Amazon OpenSearch Service manage network interfaces of VPC domains"
}

resource "aws_security_group" "domain" {
  name        = "${var.domain_name}-search"
  description = "OpenSearch domain ${var.domain_name}: HTTPS from the platform's clients only"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.domain_name}-search" })
}

resource "aws_vpc_security_group_ingress_rule" "clients" {
  for_each = var.client_security_group_ids

  security_group_id            = aws_security_group.domain.id
  description                  = "HTTPS from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = each.value
}

# --- logs ---

resource "aws_cloudwatch_log_group" "domain" {
  for_each = local.log_group_names

  name              = each.value
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

data "aws_iam_policy_document" "logs" {
  statement {
    sid     = "OpenSearchWritesDomainLogs"
    actions = ["logs:PutLogEvents", "logs:CreateLogStream"]
    resources = [
      "arn:${local.partition}:logs:${var.region}:${var.account_id}:log-group:${local.log_group_root}/*:*",
    ]

    principals {
      type        = "Service"
      identifiers = ["es.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [var.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [local.domain_arn]
    }
  }
}

resource "aws_cloudwatch_log_resource_policy" "domain" {
  policy_name     = "${var.domain_name}-opensearch-logs"
  policy_document = data.aws_iam_policy_document.logs.json
}

# --- domain ---

data "aws_iam_policy_document" "access" {
  statement {
    sid = "PlatformRolesOnly"
    actions = [
      "es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost", "es:ESHttpPut", "es:ESHttpPatch", "es:ESHttpDelete",
    ]
    resources = ["${local.domain_arn}/*"]

    principals {
      type        = "AWS"
      identifiers = distinct(concat([var.master_user_arn], var.client_role_arns))
    }
  }
}

resource "aws_opensearch_domain" "this" {
  domain_name     = var.domain_name
  engine_version  = var.engine_version
  access_policies = data.aws_iam_policy_document.access.json

  cluster_config {
    instance_type            = var.instance_type
    instance_count           = var.instance_count
    zone_awareness_enabled   = local.zone_aware
    dedicated_master_enabled = var.dedicated_master_count > 0
    dedicated_master_type    = var.dedicated_master_count > 0 ? var.dedicated_master_type : null
    dedicated_master_count   = var.dedicated_master_count > 0 ? var.dedicated_master_count : null

    dynamic "zone_awareness_config" {
      for_each = local.zone_aware ? [1] : []
      content {
        availability_zone_count = 2
      }
    }
  }

  ebs_options {
    ebs_enabled = true
    volume_type = "gp3"
    volume_size = var.volume_size_gb
  }

  vpc_options {
    subnet_ids         = slice(var.subnet_ids, 0, local.zone_aware ? 2 : 1)
    security_group_ids = [aws_security_group.domain.id]
  }

  encrypt_at_rest {
    enabled    = true
    kms_key_id = var.kms_key_arn
  }

  node_to_node_encryption {
    enabled = true
  }

  domain_endpoint_options {
    enforce_https       = true
    tls_security_policy = var.tls_security_policy
  }

  advanced_security_options {
    enabled                        = true
    anonymous_auth_enabled         = false
    internal_user_database_enabled = false

    master_user_options {
      master_user_arn = var.master_user_arn
    }
  }

  dynamic "log_publishing_options" {
    for_each = local.log_types
    content {
      log_type                 = log_publishing_options.value
      cloudwatch_log_group_arn = aws_cloudwatch_log_group.domain[log_publishing_options.value].arn
      enabled                  = true
    }
  }

  software_update_options {
    auto_software_update_enabled = true
  }

  tags = merge(var.tags, { Name = var.domain_name })

  depends_on = [aws_cloudwatch_log_resource_policy.domain, aws_iam_service_linked_role.opensearch]
}
