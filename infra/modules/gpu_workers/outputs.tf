output "job_queue_name" {
  description = "Name of the Batch job queue the GPU tasks submit to."
  value       = aws_batch_job_queue.gpu.name
}

output "job_queue_arn" {
  description = "ARN of the Batch job queue."
  value       = aws_batch_job_queue.gpu.arn
}

output "job_definition_name" {
  description = "Name of the indexer job definition (submit by name to run its latest revision)."
  value       = aws_batch_job_definition.indexer.name
}

output "job_definition_arn" {
  description = "ARN of the current revision of the indexer job definition."
  value       = aws_batch_job_definition.indexer.arn
}

output "compute_environment_arn" {
  description = "ARN of the GPU compute environment."
  value       = aws_batch_compute_environment.gpu.arn
}

output "repository_url" {
  description = "ECR repository the indexer image is pushed to."
  value       = aws_ecr_repository.indexer.repository_url
}

output "image" {
  description = "Image reference the job definition runs."
  value       = "${aws_ecr_repository.indexer.repository_url}:${var.image_tag}"
}

output "job_role_arn" {
  description = "ARN of the role the indexer jobs run as."
  value       = aws_iam_role.job.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the indexer jobs."
  value       = aws_cloudwatch_log_group.jobs.name
}

output "security_group_id" {
  description = "Security group of the GPU worker instances."
  value       = aws_security_group.workers.id
}
