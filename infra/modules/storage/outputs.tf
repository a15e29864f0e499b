output "catalogue_bucket_name" {
  description = "Name of the catalogue bucket."
  value       = aws_s3_bucket.this["catalogue"].bucket
}

output "catalogue_bucket_arn" {
  description = "ARN of the catalogue bucket."
  value       = aws_s3_bucket.this["catalogue"].arn
}

output "artifact_bucket_name" {
  description = "Name of the artifact bucket (Airflow code)."
  value       = aws_s3_bucket.this["artifacts"].bucket
}

output "artifact_bucket_arn" {
  description = "ARN of the artifact bucket."
  value       = aws_s3_bucket.this["artifacts"].arn
}

output "kms_key_arn" {
  description = "ARN of the platform KMS key."
  value       = aws_kms_key.this.arn
}

output "kms_key_alias" {
  description = "Alias of the platform KMS key (\"alias/<name>\"); IAM policies scope KMS use to it with kms:ResourceAliases."
  # Built from the alias resource so that dependents wait for it, and known at plan time.
  value = aws_kms_alias.this.name
}

output "prefixes" {
  description = "Key prefixes of the catalogue bucket layout."
  value       = var.prefixes
}
