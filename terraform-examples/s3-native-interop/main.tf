# Terraform's own s3 backend on the bucket stategate uses (see stategate.yaml
# here, and [working alongside Terraform's native s3 backend](../../docs/stores.md#working-alongside-terraforms-native-s3-backend)).
# It reads and writes the same state object as the
# quickstart example does through stategate, and both lock the same
# `<key>.tflock` object, so a run through stategate and a native run exclude
# each other.
#
# With a server other than AWS S3, point Terraform at it first, e.g.
#   export AWS_ENDPOINT_URL_S3=http://127.0.0.1:9000
# Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile.
# stategate's `prefix` setting goes in front of `key`.
terraform {
  backend "s3" {
    bucket       = "terraform-states"
    key          = "quickstart/terraform.tfstate"
    region       = "us-east-1"
    use_lockfile = true

    # Only needed for S3-compatible servers; remove them for AWS S3.
    use_path_style              = true
    skip_credentials_validation = true
    skip_requesting_account_id  = true
    skip_region_validation      = true
    skip_metadata_api_check     = true
  }
}

variable "greeting" {
  type    = string
  default = "hello from stategate"
}

resource "terraform_data" "example" {
  input = var.greeting
}

output "greeting" {
  value = terraform_data.example.output
}
