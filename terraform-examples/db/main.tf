# State in stategate on a database (stategate.yaml beside this file). The
# Terraform side is the same as for any other store: one http backend URL,
# locked with LOCK and UNLOCK. Start stategate first.
terraform {
  backend "http" {
    address        = "http://127.0.0.1:8080/states/db-example/terraform.tfstate"
    lock_address   = "http://127.0.0.1:8080/states/db-example/terraform.tfstate"
    unlock_address = "http://127.0.0.1:8080/states/db-example/terraform.tfstate"
  }
}

variable "greeting" {
  type    = string
  default = "hello from a database"
}

resource "terraform_data" "example" {
  input = var.greeting
}

output "greeting" {
  value = terraform_data.example.output
}
