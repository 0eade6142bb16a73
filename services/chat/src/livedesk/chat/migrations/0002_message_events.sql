-- chat_with_seq(prefix, seq): the encoded envelope ``prefix`` with its
-- message_created.seq set to ``seq``.
--
-- Why: a message, its seq and its outbox event are written by ONE statement
-- (one round trip, no explicit transaction) on the hottest path of the
-- system, but the seq is only known inside that statement. Protobuf defines
-- concatenation of two encoded messages as their merge, so the writer encodes
-- the envelope without the seq and the database appends the encoding of
-- Envelope{message_created{seq}}: field 26, length-delimited, holding field 2
-- as a varint. livedesk.chat.message_events checks those field numbers at
-- import, and a test compares this function with the protobuf library.
CREATE OR REPLACE FUNCTION chat_with_seq(prefix bytea, seq bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    varint bytea := ''::bytea;
    n bigint := seq;
    inner_message bytea;
BEGIN
    LOOP
        IF n < 128 THEN
            varint := varint || set_byte('\x00'::bytea, 0, n::int);
            EXIT;
        END IF;
        varint := varint || set_byte('\x00'::bytea, 0, ((n & 127) | 128)::int);
        n := n >> 7;
    END LOOP;
    inner_message := '\x10'::bytea || varint;
    RETURN prefix || '\xd201'::bytea
        || set_byte('\x00'::bytea, 0, length(inner_message)) || inner_message;
END
$$;
