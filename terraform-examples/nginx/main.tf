# State in stategate behind nginx, mounted under /tfstate/ (nginx.conf here).
# Start stategate with `stategate serve --base-path /tfstate` and nginx with
# nginx.conf; http://127.0.0.1:8081 is nginx's listen address there (replace
# it with your nginx's address). Locks use LOCK and UNLOCK, which nginx
# passes through.
terraform {
  backend "http" {
    address        = "http://127.0.0.1:8081/tfstate/states/nginx/terraform.tfstate"
    lock_address   = "http://127.0.0.1:8081/tfstate/states/nginx/terraform.tfstate"
    unlock_address = "http://127.0.0.1:8081/tfstate/states/nginx/terraform.tfstate"

    # If something else on the way (a load balancer, a firewall) refuses
    # LOCK and UNLOCK, replace the two lines above with these:
    # lock_address   = "http://127.0.0.1:8081/tfstate/locks/nginx/terraform.tfstate"
    # lock_method    = "POST"
    # unlock_address = "http://127.0.0.1:8081/tfstate/locks/nginx/terraform.tfstate"
    # unlock_method  = "DELETE"
  }
}

variable "greeting" {
  type    = string
  default = "hello through nginx"
}

resource "terraform_data" "example" {
  input = var.greeting
}

output "greeting" {
  value = terraform_data.example.output
}
