# Read another configuration's outputs (here the quickstart's) from stategate.
data "terraform_remote_state" "quickstart" {
  backend = "http"
  config = {
    address = "http://127.0.0.1:8080/states/quickstart/terraform.tfstate"
  }
}

output "upstream_greeting" {
  value = data.terraform_remote_state.quickstart.outputs.greeting
}
