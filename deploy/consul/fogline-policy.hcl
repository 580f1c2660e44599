# ACL policy for the token Fogline processes use (CONSUL_HTTP_TOKEN_FILE):
#   consul acl policy create -name fogline -rules @deploy/consul/fogline-policy.hcl
#   consul acl token create -description "fogline" -policy-name fogline
# Register and deregister their own services, read the others' health, read the live configuration.
service_prefix "fogline-" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
agent_prefix "" {
  policy = "read"
}
key_prefix "fogline/" {
  policy = "read"
}
