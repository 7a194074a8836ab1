"""Pure logic: no I/O, no aiohttp, asyncpg or aiobotocore. Tested in microseconds."""
