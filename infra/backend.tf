# State lives in S3 with S3-native locking. The bucket, key and region come from a backend file per environment:
#   terraform init -backend-config=environments/prod.s3.tfbackend
# (copy environments/backend.s3.tfbackend.example; see docs/deployment.md). Offline checks use -backend=false.
terraform {
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}
