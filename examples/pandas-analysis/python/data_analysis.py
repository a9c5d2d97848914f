"""Pattern 2: wrap pandas for data analysis; DuckDB rows become a DataFrame with `.df()`."""
import json

from mxcp.runtime import db
from sales_data import TABLES, ensure_sales


def _frame(table_name: str):
    if table_name not in TABLES:
        # Table names cannot be bound as parameters: only known tables are accepted.
        raise ValueError(f"unknown table '{table_name}' (known: {', '.join(TABLES)})")
    ensure_sales()
    return db.execute(f"SELECT * FROM {table_name}").df()


def _plain(value):
    """numpy and pandas values to JSON-ready Python values."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def analyze_dataframe(table_name: str) -> dict:
    import numpy as np

    df = _frame(table_name)
    numeric = df.select_dtypes(include=[np.number])
    analysis = {
        "shape": list(df.shape),
        "columns": list(df.columns),
        "dtypes": df.dtypes.astype(str).to_dict(),
        "missing_values": df.isnull().sum().to_dict(),
        "means": numeric.mean().round(3).to_dict(),
    }
    if len(numeric.columns) > 1:
        analysis["correlations"] = numeric.corr().round(3).to_dict()
    return _plain(analysis)


def pandas_query(table_name: str, operation: str) -> dict:
    df = _frame(table_name)
    if operation == "describe":
        result = df.describe().round(3).to_dict()
    elif operation == "head":
        result = df.head(5).to_dict("records")
    elif operation == "value_counts":
        first_text_column = df.select_dtypes(include=["object", "string"]).columns[0]
        result = df[first_text_column].value_counts().sort_index().to_dict()
    else:
        return {"error": f"Unknown operation: {operation}"}
    return _plain({"operation": operation, "result": result})


def revenue_by_region() -> list:
    df = _frame("sales")
    df["revenue"] = df["quantity"] * df["unit_price"]
    grouped = df.groupby("region", as_index=False)["revenue"].sum().round(2).sort_values("region")
    return _plain(grouped.to_dict("records"))
