# The C-level entry points of engine.delivery._batch, for the compiled modules
# that call them on every response (`cimport`, no Python call in between).

cpdef bytes splice_array(list parts)
cpdef bytes splice_http(bytes head, list parts)
cpdef bytes splice_jsonp(bytes head, bytes callback, list parts)
cpdef bytes encode_message(object message)
cpdef list encode_all(list messages)
cpdef bytes splice_ws(list parts)
