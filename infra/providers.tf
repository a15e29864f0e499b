provider "aws" {
  region = var.region

  # Refuse to run against any other account than the one the variables describe.
  allowed_account_ids = [var.account_id]

  default_tags {
    tags = local.tags
  }
}
