# State in stategate, kept in an Alibaba Cloud OSS bucket.
#
# Start the server first, pointing it at the bucket (credentials from the
# environment, as for Terraform's own oss backend):
#
#   export ALICLOUD_ACCESS_KEY=... ALICLOUD_SECRET_KEY=...
#   stategate serve --storage-type oss -C bucket=bucket-for-terraform-state \
#     -C region=cn-beijing -C prefix=stategate -C encrypt=true -C acl=private
#
# The state lands in the bucket at stategate/oss-example/terraform.tfstate,
# its lock at stategate/oss-example/terraform.tfstate.tflock.
terraform {
  backend "http" {
    address        = "http://127.0.0.1:8080/states/oss-example/terraform.tfstate"
    lock_address   = "http://127.0.0.1:8080/states/oss-example/terraform.tfstate"
    unlock_address = "http://127.0.0.1:8080/states/oss-example/terraform.tfstate"
  }
}

variable "greeting" {
  type    = string
  default = "hello from stategate on OSS"
}

resource "terraform_data" "example" {
  input = var.greeting
}

output "greeting" {
  value = terraform_data.example.output
}
