# For proxies and gateways that refuse the LOCK and UNLOCK methods: lock with
# POST and unlock with DELETE on the /locks/ URL of the same key.
terraform {
  backend "http" {
    address        = "http://127.0.0.1:8080/states/gateway/terraform.tfstate"
    lock_address   = "http://127.0.0.1:8080/locks/gateway/terraform.tfstate"
    lock_method    = "POST"
    unlock_address = "http://127.0.0.1:8080/locks/gateway/terraform.tfstate"
    unlock_method  = "DELETE"
  }
}

variable "greeting" {
  type    = string
  default = "hello through a gateway"
}

resource "terraform_data" "example" {
  input = var.greeting
}

output "greeting" {
  value = terraform_data.example.output
}
