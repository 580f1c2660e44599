# Consul client agent on every Fogline host (cloud, edge, device): the processes talk only to this
# local agent (CONSUL_HTTP_ADDR=127.0.0.1:8500), which joins the Consul servers.
# Install as /etc/consul.d/client.hcl; replace the addresses, the gossip key and the tokens.
datacenter = "dc1"
data_dir   = "/opt/consul"
server     = false

bind_addr      = "{{ GetPrivateInterfaces | include \"network\" \"10.0.0.0/8\" | attr \"address\" }}"
client_addr    = "127.0.0.1"                 # the HTTP API only for local processes
retry_join     = ["10.0.0.2", "10.0.0.3", "10.0.0.4"]   # the Consul servers
encrypt        = "REPLACE-WITH-consul-keygen-OUTPUT"

ports {
  http = 8500
  grpc = 8502
}

# Fogline registers gRPC health checks; the agent must reach the local processes' ports.
enable_local_script_checks = false

acl {
  enabled        = true
  default_policy = "deny"
  tokens {
    agent = "REPLACE-WITH-AGENT-TOKEN"
  }
}

tls {
  defaults {
    ca_file         = "/etc/consul.d/consul-agent-ca.pem"
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}
