"""ClickHouse schema migrations, ``NNNN_name.sql``, applied in order by :mod:`..schema`."""
