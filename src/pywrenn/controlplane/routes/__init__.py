"""HTTP routes: thin functions that parse, call a service, and shape the reply.

Owns: paths and status codes. Knows nothing of: SQL (services) or errors-to-HTTP
(`errors.install_error_handlers`).
"""
