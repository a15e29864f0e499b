output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr_block" {
  description = "IPv4 CIDR of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "private_subnet_ids" {
  description = "IDs of the private subnets, in the order of var.availability_zones."
  value       = aws_subnet.private[*].id
}

output "private_route_table_id" {
  description = "Route table of the private subnets (the S3 gateway endpoint is attached to it)."
  value       = aws_route_table.private.id
}

output "s3_endpoint_id" {
  description = "ID of the S3 gateway endpoint."
  value       = aws_vpc_endpoint.s3.id
}

output "interface_endpoint_ids" {
  description = "Interface VPC endpoint IDs by service suffix."
  value       = { for k, e in aws_vpc_endpoint.interface : k => e.id }
}

output "internet_egress" {
  description = "Whether private subnets route to the internet through a NAT gateway."
  value       = var.enable_nat_gateway
}
