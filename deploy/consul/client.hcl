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

# Fogline processes with TLS (deploy/README.md, "TLS and credentials") register gRPC health checks over
# TLS, checking the member's certificate for <id>[.<region>].<service>.fogline; they require client certificates,
# so the agent must trust the fleet CA and present a fleet client certificate:
#   fogline certs issue --ca /etc/fogline/ca --service client --id consul-agent --out /etc/consul.d/fogline/
#   chown -R consul: /etc/consul.d/fogline
#   cat /etc/consul.d/consul-agent-ca.pem /etc/consul.d/fogline/ca.pem > /etc/consul.d/ca-bundle.pem
# With enable_agent_tls_for_checks the agent's checks use its internal-RPC TLS settings (tls.defaults
# unless tls.internal_rpc overrides them): ca_file/cert_file/key_file below. The certificate is then
# also what this agent presents to the Consul servers, so where the servers verify incoming RPC
# (verify_incoming) they would refuse it: keep that off on the servers' internal RPC (gossip
# encryption and ACLs still apply), or run the members with FOGLINE_CLIENT_AUTH=optional and API keys,
# when the checks need the fleet CA only. Trust the fleet CA on client agents only, never on servers.
# enable_agent_tls_for_checks = true

tls {
  defaults {
    ca_file         = "/etc/consul.d/consul-agent-ca.pem"
    # With Fogline TLS: the Consul CA and the fleet CA, and the fleet client certificate.
    # ca_file       = "/etc/consul.d/ca-bundle.pem"
    # cert_file     = "/etc/consul.d/fogline/cert.pem"
    # key_file      = "/etc/consul.d/fogline/key.pem"
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}
