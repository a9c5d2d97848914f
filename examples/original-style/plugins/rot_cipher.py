"""A UDF plugin in the original class form: each @udf method becomes DuckDB function <method>_<instance>."""
from mxcp.plugins import MXCPBasePlugin, udf


class MXCPPlugin(MXCPBasePlugin):
    def __init__(self, config):
        super().__init__(config)
        self.rotation = int(config.get("rotation", "13"))

    def _shift(self, text: str, by: int) -> str:
        out = []
        for char in text:
            if char.isalpha():
                base = ord("a") if char.islower() else ord("A")
                out.append(chr(base + (ord(char) - base + by) % 26))
            else:
                out.append(char)
        return "".join(out)

    @udf
    def encode(self, text: str) -> str:
        return self._shift(text, self.rotation)

    @udf
    def decode(self, text: str) -> str:
        return self._shift(text, -self.rotation)

    @udf
    def letters(self, text: str) -> int:
        return sum(1 for char in text if char.isalpha())
