# State in stategate, locked with the LOCK and UNLOCK methods on the same URL.
# Start the server first: `stategate serve` (listens on 127.0.0.1:8080).
terraform {
  backend "http" {
    address        = "http://127.0.0.1:8080/states/quickstart/terraform.tfstate"
    lock_address   = "http://127.0.0.1:8080/states/quickstart/terraform.tfstate"
    unlock_address = "http://127.0.0.1:8080/states/quickstart/terraform.tfstate"
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
