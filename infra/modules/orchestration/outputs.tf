output "environment_name" {
  description = "Name of the MWAA environment."
  value       = aws_mwaa_environment.this.name
}

output "environment_arn" {
  description = "ARN of the MWAA environment."
  value       = aws_mwaa_environment.this.arn
}

output "webserver_url" {
  description = "Host name of the Airflow UI."
  value       = aws_mwaa_environment.this.webserver_url
}

output "execution_role_name" {
  description = "Name of the execution role (the identity every Airflow task runs as)."
  value       = aws_iam_role.execution.name
}

output "execution_role_arn" {
  description = "ARN of the execution role. Built from the role's name so it is known at plan time (it feeds the search domain's access policy)."
  value       = "arn:${local.partition}:iam::${var.account_id}:role${aws_iam_role.execution.path}${aws_iam_role.execution.name}"
}

output "security_group_id" {
  description = "Security group of the environment's workers (allowed to reach the search domain)."
  value       = aws_security_group.airflow.id
}

output "connections_secret_prefix" {
  description = "Secrets Manager prefix the environment reads Airflow connections from."
  value       = local.connections_prefix
}

output "variables_secret_prefix" {
  description = "Secrets Manager prefix the environment reads Airflow variables from."
  value       = local.variables_prefix
}
