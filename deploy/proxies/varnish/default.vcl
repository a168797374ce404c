# Varnish in front of engine nodes: everything passed (never cached),
# WebSocket through `pipe`, round-robin, no sticky sessions.
# A template: see deploy/proxies/README.md for the @...@ placeholders.
#   varnishd -F -a @LISTEN_HOST@:@LISTEN_PORT@ -f default.vcl -p pipe_timeout=3600
# (pipe_timeout: how long a piped WebSocket may stay silent; the default,
# 60 s, is longer than the Bayeux `timeout`, 30 s by default.)
vcl 4.1;

import directors;

# Backend timeouts longer than the Bayeux `timeout` (Varnish's own default
# first_byte_timeout is 60 s): a held /meta/connect sends nothing until it ends.
backend @NODE_NAME@ { .host = "@NODE_HOST@"; .port = "@NODE_PORT@"; .first_byte_timeout = @PROXY_TIMEOUT@s; .between_bytes_timeout = @PROXY_TIMEOUT@s; }

sub vcl_init {
    # Round-robin; not a hash director: a long-polling session's requests
    # land on any node, which forwards them to the session's node over Redis.
    new engines = directors.round_robin();
    engines.add_backend(@NODE_NAME@);
}

sub vcl_recv {
    set req.backend_hint = engines.backend();
    # A WebSocket upgrade: pipe, i.e. a plain TCP tunnel to the backend.
    if (req.http.Upgrade ~ "(?i)websocket") {
        return (pipe);
    }
    # Bayeux is never cacheable (a GET is a callback-polling request): pass
    # everything, so that Cookie / Set-Cookie (BAYEUX_BROWSER) go through
    # unchanged and replies stream as they come (do_stream is the default).
    # Varnish adds X-Forwarded-For itself (for the engine's --trusted-proxies).
    return (pass);
}

sub vcl_pipe {
    # Varnish sends "Connection: close" on a pipe unless told otherwise.
    if (req.http.Upgrade) {
        set bereq.http.Upgrade = req.http.Upgrade;
        set bereq.http.Connection = req.http.Connection;
    }
}
