# ACL policy for operators who change the live catalog and routing policy in KV:
#   consul kv put fogline/catalog @catalog.toml
#   consul kv put fogline/policy 'device_queue_limit = 64'
key_prefix "fogline/" {
  policy = "write"
}
