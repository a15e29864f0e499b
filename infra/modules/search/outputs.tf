output "domain_name" {
  description = "Name of the OpenSearch domain."
  value       = aws_opensearch_domain.this.domain_name
}

output "domain_arn" {
  description = "ARN of the OpenSearch domain."
  value       = aws_opensearch_domain.this.arn
}

output "endpoint" {
  description = "Host name of the domain's HTTPS endpoint (inside the VPC)."
  value       = aws_opensearch_domain.this.endpoint
}

output "dashboards_endpoint" {
  description = "Host name and path of OpenSearch Dashboards (inside the VPC)."
  value       = aws_opensearch_domain.this.dashboard_endpoint
}

output "security_group_id" {
  description = "Security group of the domain."
  value       = aws_security_group.domain.id
}
