-- v4: the route a listener gives ClientHellos without SNI (load balancer health checks, old
-- clients, IP-literal URLs). Empty: such hellos are reset, as before.
ALTER TABLE listeners ADD COLUMN no_sni_route TEXT NOT NULL DEFAULT '';
