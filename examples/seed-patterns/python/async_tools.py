"""Async functions run on the server's event loop; asyncio.gather runs their I/O concurrently."""
import asyncio


async def square_all(numbers: list[int]) -> list[dict]:
    async def square(n: int) -> dict:
        await asyncio.sleep(0)  # stands in for real I/O, e.g. an HTTP request
        return {"n": n, "square": n * n}

    return list(await asyncio.gather(*(square(n) for n in numbers)))
