# stategate over HTTPS with a private CA. Put the CA that signed stategate's
# certificate in client_ca_certificate_pem; when stategate runs with
# tls.client_ca, also give this client's certificate and key (or set them
# with -backend-config, so the key stays out of the configuration).
terraform {
  backend "http" {
    address        = "https://127.0.0.1:8443/states/tls/terraform.tfstate"
    lock_address   = "https://127.0.0.1:8443/states/tls/terraform.tfstate"
    unlock_address = "https://127.0.0.1:8443/states/tls/terraform.tfstate"

    client_ca_certificate_pem = <<-EOT
      -----BEGIN CERTIFICATE-----
      (the PEM of your CA)
      -----END CERTIFICATE-----
    EOT
    # client_certificate_pem = <<-EOT ... EOT
    # client_private_key_pem = <<-EOT ... EOT
  }
}

resource "terraform_data" "example" {
  input = "stored over TLS"
}
