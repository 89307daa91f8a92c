"""Code the `upload_code` example sends to the server: a fibonacci function.

Run remotely with `execute`, or uploaded and imported there as the module `remote_code`.
"""


def fib(n):
    """The n-th Fibonacci number (fib(0) == 0, fib(1) == 1), iteratively."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
