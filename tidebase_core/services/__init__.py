"""Every write of the durable core. Entry points are ``transaction.atomic(durable=True)`` or a
single autocommit statement; helpers that must run inside a caller's transaction say so."""
