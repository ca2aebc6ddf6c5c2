# The http backend has no `terraform workspace` support, so the workspace is
# part of the URL. This state lands at workspaces/dev/app/terraform.tfstate;
# switch with `terraform init -reconfigure -backend-config=...` or one
# directory per workspace.
terraform {
  backend "http" {
    address        = "http://127.0.0.1:8080/states/app/terraform.tfstate?workspace=dev"
    lock_address   = "http://127.0.0.1:8080/states/app/terraform.tfstate?workspace=dev"
    unlock_address = "http://127.0.0.1:8080/states/app/terraform.tfstate?workspace=dev"
  }
}

variable "greeting" {
  type    = string
  default = "hello from the dev workspace"
}

resource "terraform_data" "example" {
  input = var.greeting
}

output "greeting" {
  value = terraform_data.example.output
}
