"""Every offline snippet of the seed's Python runtime API reference, copied into python/ files of a project.

The snippets are copied as the seed writes them; only network calls are replaced by local stand-ins (each
replacement is marked). The seed's lifecycle example imports httpx, which this environment does not
install: the project ships a tiny local `python/httpx.py` with the `Client` it uses, so the snippet itself
stays unchanged.

The pandas, scikit-learn and redis snippets import their library at the top of the module; each of those
modules (with its tools) is in the project only when its optional extra is installed, since a module that
fails to import stops the runtime. Their tests skip, naming the extra; every other test runs either way.
"""
from __future__ import annotations

import sys

import duckdb
import pytest

from executor_helpers import python_tool, require_plugin, started
from extras import missing_from, needs_extra
from mxcp_core.context import OutsideRuntimeError
from mxcp_core.errors import ExecutionError, MxcpError

USER_CONFIG = """
mxcp: 1
projects:
  demo:
    profiles:
      default:
        secrets:
          - {name: api_key, type: api, parameters: {value: "${SEED_TEST_API_KEY}"}}
          - name: api_service
            type: http
            parameters: {BEARER_TOKEN: bearer-1, EXTRA_HTTP_HEADERS: {X-Team: data}}
          - {name: external_api, type: api, parameters: {value: ext-key}}
          - {name: api_token, type: api, parameters: {token: tok-1}}
      other:
        secrets:
          - {name: api_key, type: api, parameters: {value: other-profile-key}}
          - {name: api_service, type: http, parameters: {BEARER_TOKEN: bearer-2}}
"""

SITE = """
mxcp: 1
project: demo
profile: default
secrets: [api_key, api_service, external_api, api_token]
profiles:
  default: {}
  other: {}
"""

FILES = {
    "mxcp-site.yml": SITE,
    # --- Database Access -----------------------------------------------------------------------------
    "python/database_access.py": '''
        from mxcp.runtime import db

        def find_user(user_id: int) -> dict:
            # Execute query
            results = db.execute(
                "SELECT * FROM users WHERE id = $id",
                {"id": user_id}
            )

            # Get first result
            first = results[0] if results else None

            # Iterate results
            for row in results:
                print(row["name"])
            return first
    ''',
    "tools/find_user.yml": python_tool("find_user", "database_access.py",
                                       parameters="[{name: user_id, type: integer}]", returns="{type: object}"),
    # --- Configuration & Secrets ---------------------------------------------------------------------
    "python/configuration.py": '''
        from mxcp.runtime import config

        def show_configuration() -> dict:
            # Get secret (returns dict with parameters)
            secret = config.get_secret("api_key")
            api_key = secret["value"] if secret else None

            # For complex secrets (like HTTP with headers)
            http_secret = config.get_secret("api_service")
            if http_secret:
                token = http_secret.get("BEARER_TOKEN")
                headers = http_secret.get("EXTRA_HTTP_HEADERS", {})

            # Get settings
            project_name = config.get_setting("project")
            debug_mode = config.get_setting("debug", default=False)

            # Access full configs
            user_config = config.user_config
            site_config = config.site_config
            return {
                "api_key": api_key, "token": token, "headers": headers, "project_name": project_name,
                "debug_mode": debug_mode, "user_projects": sorted(user_config["projects"]),
                "site_project": site_config["project"],
            }
    ''',
    "tools/show_configuration.yml": python_tool("show_configuration", "configuration.py", returns="{type: object}"),
    # --- Lifecycle Hooks -------------------------------------------------------------------------------
    "python/httpx.py": '''
        """Local stand-in for httpx (not installed here): the lifecycle snippet only builds and closes a Client."""
        class Client:
            def __init__(self):
                self.is_closed = False

            def close(self):
                self.is_closed = True
    ''',
    "python/lifecycle.py": '''
        from mxcp.runtime import on_init, on_shutdown
        import httpx

        client = None

        @on_init
        def setup():
            """Initialize resources at startup"""
            global client
            client = httpx.Client()
            print("Client initialized")

        @on_shutdown
        def cleanup():
            """Clean up resources at shutdown"""
            global client
            if client:
                client.close()

        def client_state() -> dict:
            return {"ready": client is not None and not client.is_closed}
    ''',
    "tools/client_state.yml": python_tool("client_state", "lifecycle.py", returns="{type: object}"),
    # --- Async Functions (the aiohttp request replaced by a local coroutine) -------------------------------
    "python/async_functions.py": '''
        import asyncio

        async def fetch_data(urls: list[str]) -> list[dict]:
            """Fetch from multiple URLs concurrently"""

            async def fetch_one(url: str) -> dict:
                # replaced network call: aiohttp.ClientSession().get(url).json()
                await asyncio.sleep(0.01)
                return {"url": url, "length": len(url)}

            results = await asyncio.gather(*[fetch_one(url) for url in urls])
            return results
    ''',
    "tools/fetch_data.yml": python_tool("fetch_data", "async_functions.py",
                                        parameters="[{name: urls, type: array, items: {type: string}}]",
                                        returns="{type: array}"),
    # --- Return Types ------------------------------------------------------------------------------------
    "python/return_types.py": '''
        # Array return
        def list_items() -> list:
            return [{"id": 1}, {"id": 2}]

        # Object return
        def get_stats() -> dict:
            return {"total": 100, "active": 75}

        # Scalar return
        def count_items() -> int:
            return 42
    ''',
    "tools/list_items.yml": python_tool("list_items", "return_types.py", returns="{type: array}"),
    "tools/get_stats.yml": python_tool("get_stats", "return_types.py", returns="{type: object}"),
    "tools/count_items.yml": python_tool("count_items", "return_types.py", returns="{type: integer}"),
    # --- Shared Modules ------------------------------------------------------------------------------------
    "python/utils/validators.py": '''
        def validate_email(email: str) -> bool:
            import re
            return bool(re.match(r'^[\\w\\.-]+@[\\w\\.-]+\\.\\w+$', email))
    ''',
    "python/main_tool.py": '''
        from utils.validators import validate_email

        def process_user(email: str) -> dict:
            if not validate_email(email):
                return {"error": "Invalid email"}
            return {"status": "ok"}
    ''',
    "tools/process_user.yml": python_tool("process_user", "main_tool.py",
                                          parameters="[{name: email, type: string}]", returns="{type: object}"),
    # --- Error Handling -----------------------------------------------------------------------------------
    "python/error_handling.py": '''
        def safe_divide(a: float, b: float) -> dict:
            if b == 0:
                return {"error": "Division by zero"}
            return {"result": a / b}

        def safe_library_call(param: str) -> dict:
            """Template for safe library wrapping"""
            try:
                # Import library (can fail if not installed)
                import some_library

                # Use library
                result = some_library.do_something(param)

                return {"success": True, "result": result}

            except ImportError as e:
                return {
                    "error": "Library not installed",
                    "message": str(e),
                    "fix": "Run: pip install some_library"
                }
            except some_library.SpecificError as e:
                return {
                    "error": "Library-specific error",
                    "message": str(e),
                    "type": e.__class__.__name__
                }
            except Exception as e:
                return {
                    "error": "Unexpected error",
                    "message": str(e),
                    "type": e.__class__.__name__
                }
    ''',
    "tools/safe_divide.yml": python_tool("safe_divide", "error_handling.py",
                                         parameters="[{name: a, type: number}, {name: b, type: number}]",
                                         returns="{type: object}"),
    "tools/safe_library_call.yml": python_tool("safe_library_call", "error_handling.py",
                                               parameters="[{name: param, type: string}]", returns="{type: object}"),
    # --- External API Integration Pattern (the cache pattern; the HTTP request replaced) -------------------
    "python/external_api.py": '''
        from mxcp.runtime import config, db

        API_CALLS = []

        def fake_api(q, key):
            """Replaces the network call: records it and answers like the API would."""
            API_CALLS.append(q)
            return {"q": q, "answer": len(q)}

        async def call_external_api(param: str) -> dict:
            # Get API key
            api_key = config.get_secret("external_api")["value"]

            # Check cache
            cached = db.execute(
                "SELECT data FROM cache WHERE key = $key AND ts > datetime('now', '-1 hour')",
                {"key": param}
            ).fetchone()

            if cached:
                return cached["data"]

            # Make API call (replaced: httpx.AsyncClient().get("https://api.example.com/data", ...))
            data = fake_api(param, api_key)

            # Cache result
            db.execute(
                "INSERT OR REPLACE INTO cache (key, data, ts) VALUES ($1, $2, CURRENT_TIMESTAMP)",
                {"key": param, "data": data}
            )

            return data

        def api_calls() -> list:
            return list(API_CALLS)
    ''',
    "tools/call_external_api.yml": python_tool("call_external_api", "external_api.py",
                                               parameters="[{name: param, type: string}]", returns="{type: object}"),
    "tools/api_calls.yml": python_tool("api_calls", "external_api.py", returns="{type: array}"),
    # --- Pattern 1's import of the module-level get_secret (the request itself is network) -------------------
    "python/module_secret.py": '''
        from mxcp.runtime import get_secret

        def auth_header() -> dict:
            secret = get_secret("api_token")
            headers = None
            if secret and headers is None:
                headers = {"Authorization": f"Bearer {secret['token']}"}
            return headers
    ''',
    "tools/auth_header.yml": python_tool("auth_header", "module_secret.py", returns="{type: object}"),
    # --- Pattern 2: pandas -------------------------------------------------------------------------------
    "python/data_analysis.py": '''
        """Wrap pandas for data analysis"""

        import pandas as pd
        import numpy as np
        from mxcp.runtime import db

        def analyze_dataframe(table_name: str) -> dict:
            """Analyze a table using pandas"""
            # Read from DuckDB into pandas
            df = db.execute(f"SELECT * FROM {table_name}").df()

            # Pandas analysis
            analysis = {
                "shape": df.shape,
                "columns": list(df.columns),
                "dtypes": df.dtypes.astype(str).to_dict(),
                "missing_values": df.isnull().sum().to_dict(),
                "summary_stats": df.describe().to_dict(),
                "memory_usage": df.memory_usage(deep=True).sum()
            }

            # Numeric column correlations
            numeric_cols = df.select_dtypes(include=[np.number]).columns
            if len(numeric_cols) > 1:
                analysis["correlations"] = df[numeric_cols].corr().to_dict()

            return analysis

        def pandas_query(table_name: str, operation: str) -> dict:
            """Execute pandas operations on DuckDB table"""
            df = db.execute(f"SELECT * FROM {table_name}").df()

            # Support common pandas operations
            if operation == "describe":
                result = df.describe().to_dict()
            elif operation == "head":
                result = df.head(10).to_dict('records')
            elif operation == "value_counts":
                # For first categorical column
                cat_col = df.select_dtypes(include=['object']).columns[0]
                result = df[cat_col].value_counts().to_dict()
            else:
                return {"error": f"Unknown operation: {operation}"}

            return {"operation": operation, "result": result}
    ''',
    "tools/analyze_dataframe.yml": python_tool("analyze_dataframe", "data_analysis.py",
                                               parameters="[{name: table_name, type: string}]",
                                               returns="{type: object}"),
    "tools/pandas_query.yml": python_tool("pandas_query", "data_analysis.py",
                                          parameters="[{name: table_name, type: string}, "
                                                     "{name: operation, type: string}]",
                                          returns="{type: object}"),
    # --- Pattern 3: scikit-learn (models are saved under the working directory, as the seed does) -------
    "python/ml_wrapper.py": '''
        """Wrap scikit-learn for ML tasks"""

        from sklearn.ensemble import RandomForestClassifier
        from sklearn.model_selection import train_test_split
        from mxcp.runtime import db, on_init
        import pickle
        import os

        # Global model store
        models = {}

        @on_init
        def load_models():
            """Load saved models on startup"""
            global models
            model_dir = "models"
            if os.path.exists(model_dir):
                for file in os.listdir(model_dir):
                    if file.endswith('.pkl'):
                        model_name = file[:-4]
                        with open(os.path.join(model_dir, file), 'rb') as f:
                            models[model_name] = pickle.load(f)

        def train_classifier(
            table_name: str,
            target_column: str,
            feature_columns: list[str],
            model_name: str = "default"
        ) -> dict:
            """Train a classifier on DuckDB table"""
            # Load data
            df = db.execute(f"SELECT * FROM {table_name}").df()

            X = df[feature_columns]
            y = df[target_column]

            # Split data
            X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)

            # Train model
            model = RandomForestClassifier(n_estimators=100, random_state=42)
            model.fit(X_train, y_train)

            # Evaluate
            train_score = model.score(X_train, y_train)
            test_score = model.score(X_test, y_test)

            # Save model
            global models
            models[model_name] = model
            os.makedirs("models", exist_ok=True)
            with open(f"models/{model_name}.pkl", 'wb') as f:
                pickle.dump(model, f)

            return {
                "model_name": model_name,
                "train_accuracy": train_score,
                "test_accuracy": test_score,
                "feature_importance": dict(zip(feature_columns, model.feature_importances_))
            }

        def predict(model_name: str, features: dict) -> dict:
            """Make prediction with trained model"""
            if model_name not in models:
                return {"error": f"Model '{model_name}' not found"}

            model = models[model_name]

            # Convert features to DataFrame with correct order
            import pandas as pd
            feature_df = pd.DataFrame([features])

            prediction = model.predict(feature_df)[0]
            probabilities = model.predict_proba(feature_df)[0] if hasattr(model, 'predict_proba') else None

            return {
                "prediction": prediction,
                "probabilities": probabilities.tolist() if probabilities is not None else None
            }
    ''',
    "tools/train_classifier.yml": python_tool(
        "train_classifier", "ml_wrapper.py", returns="{type: object}",
        parameters="[{name: table_name, type: string}, {name: target_column, type: string}, "
                   "{name: feature_columns, type: array, items: {type: string}}, "
                   "{name: model_name, type: string, default: default}]"),
    "tools/predict.yml": python_tool("predict", "ml_wrapper.py", returns="{type: object}",
                                     parameters="[{name: model_name, type: string}, {name: features, type: object}]"),
    # --- Pattern 6: state with lifecycle hooks (no redis secret: the endpoint reports it, no network) ----------
    "python/stateful_library_wrapper.py": '''
        """Wrap libraries that maintain state (e.g., database connections, cache clients)"""

        from redis import Redis
        from mxcp.runtime import get_secret, on_init, on_shutdown

        redis_client = None

        @on_init
        def connect_redis():
            """Initialize Redis connection on startup"""
            global redis_client
            secret = get_secret("redis")
            if secret:
                redis_client = Redis(
                    host=secret["host"],
                    port=secret.get("port", 6379),
                    password=secret.get("password"),
                    decode_responses=True
                )

        @on_shutdown
        def disconnect_redis():
            """Clean up Redis connection"""
            global redis_client
            if redis_client:
                redis_client.close()

        def cache_get(key: str) -> dict:
            """Get value from Redis cache"""
            if not redis_client:
                return {"error": "Redis not configured"}

            try:
                value = redis_client.get(key)
                return {"key": key, "value": value, "found": value is not None}
            except Exception as e:
                return {"error": str(e)}
    ''',
    "tools/cache_get.yml": python_tool("cache_get", "stateful_library_wrapper.py",
                                       parameters="[{name: key, type: string}]", returns="{type: object}"),
    # --- Plugin System -----------------------------------------------------------------------------------
    "plugins/my_plugin.py": '''
        def custom_transform(value: str) -> str:
            """Custom transformation logic"""
            return value.upper()

        # Register with DuckDB if needed
        def register_functions(conn):
            """Register custom functions with DuckDB"""
            conn.create_function("custom_upper", custom_transform)
    ''',
    "plugins/text_processing.py": '''
        def normalize_text(value: str) -> str:
            return " ".join(value.split()).lower()

        def register_functions(conn):
            conn.create_function("normalize_text", normalize_text)
    ''',
    "python/plugin_usage.py": '''
        from mxcp.runtime import db, plugins

        def plugin_overview() -> dict:
            # Get a specific plugin
            my_plugin = plugins.get("my_custom_plugin")
            if my_plugin:
                result = my_plugin.some_method()

            # List available plugins
            available_plugins = plugins.list()
            print(f"Available plugins: {available_plugins}")
            upper = db.execute("SELECT custom_upper('duck') AS v").fetchone()["v"]
            return {"missing": my_plugin, "available": available_plugins, "upper": upper}

        def use_custom_function(data: str) -> dict:
            """Use a custom DuckDB function from a plugin"""

            # Get the plugin
            text_plugin = plugins.get("text_processing")
            if not text_plugin:
                return {"error": "text_processing plugin not available"}

            # Use plugin functionality
            result = text_plugin.normalize_text(data)

            return {"normalized": result}
    ''',
    "tools/plugin_overview.yml": python_tool("plugin_overview", "plugin_usage.py", returns="{type: object}"),
    "tools/use_custom_function.yml": python_tool("use_custom_function", "plugin_usage.py",
                                                 parameters="[{name: data, type: string}]", returns="{type: object}"),
    # --- .df() without pandas, and rows helpers ------------------------------------------------------------
    "python/rows.py": '''
        from mxcp.runtime import db

        def as_frame() -> int:
            return len(db.execute("SELECT 1 AS x").df())

        def rows_api() -> dict:
            rows = db.execute("SELECT * FROM users ORDER BY id")
            first = rows.fetchone()
            rest = rows.fetchall()
            return {"first": first, "rest": rest, "list": list(rows), "len": len(rows), "after": rows.fetchone()}
    ''',
    "tools/as_frame.yml": python_tool("as_frame", "rows.py", returns="{type: integer}"),
    "tools/rows_api.yml": python_tool("rows_api", "rows.py", returns="{type: object}"),
}


# The files that import an optional extra's module at their top, by extra: left out when it is missing.
EXTRA_FILES = {
    "pandas": ("python/data_analysis.py", "tools/analyze_dataframe.yml", "tools/pandas_query.yml"),
    "ml": ("python/ml_wrapper.py", "tools/train_classifier.yml", "tools/predict.yml"),
    "redis": ("python/stateful_library_wrapper.py", "tools/cache_get.yml"),
}


def installable_files() -> dict[str, str]:
    """FILES without the modules (and their tools) whose optional extra is not installed."""
    left_out = {path for extra, paths in EXTRA_FILES.items() if missing_from(extra) for path in paths}
    return {path: text for path, text in FILES.items() if path not in left_out}


@pytest.fixture
def project(make_project, user_config, monkeypatch, tmp_path):
    monkeypatch.setenv("SEED_TEST_API_KEY", "key-from-env")
    user_config(USER_CONFIG)
    root = make_project(tmp_path / "seed", installable_files())
    database = root / "data" / "db-default.duckdb"
    database.parent.mkdir(parents=True)
    with duckdb.connect(str(database)) as conn:
        conn.execute("CREATE TABLE users AS SELECT * FROM (VALUES (1, 'Ada', 'ada@example.com', 36.5::DOUBLE), "
                     "(2, 'Bob', NULL, 41.0), (3, 'Cy', 'cy@example.com', 29.0)) t(id, name, email, score)")
        conn.execute("CREATE TABLE cache (key VARCHAR PRIMARY KEY, data STRUCT(q VARCHAR, answer INTEGER), "
                     "ts TIMESTAMP)")
    return root


def test_database_access(project, capsys):
    with started(project) as runtime:
        assert runtime.call("tool", "find_user", {"user_id": 2}) == {
            "id": 2, "name": "Bob", "email": None, "score": 41.0}
    assert "Bob" in capsys.readouterr().out


def test_rows_offer_fetchone_fetchall_and_stay_a_list(project):
    with started(project) as runtime:
        result = runtime.call("tool", "rows_api")
    assert result["first"]["name"] == "Ada"
    assert [r["name"] for r in result["rest"]] == ["Bob", "Cy"]
    assert [r["name"] for r in result["list"]] == ["Ada", "Bob", "Cy"] and result["len"] == 3
    assert result["after"] is None


def test_configuration_and_secrets(project):
    with started(project) as runtime:
        result = runtime.call("tool", "show_configuration")
    assert result == {
        "api_key": "key-from-env", "token": "bearer-1", "headers": {"X-Team": "data"}, "project_name": "demo",
        "debug_mode": False, "user_projects": ["demo"], "site_project": "demo",
    }


def test_get_secret_follows_the_profile_option(project):
    """Original bug: config.get_secret ignored --profile."""
    with started(project, profile="other") as runtime:
        result = runtime.call("tool", "show_configuration")
    assert (result["api_key"], result["token"], result["headers"]) == ("other-profile-key", "bearer-2", {})


def test_module_level_get_secret(project):
    with started(project) as runtime:
        assert runtime.call("tool", "auth_header") == {"Authorization": "Bearer tok-1"}


def test_lifecycle_hooks_run_before_the_first_call_and_at_shutdown(project, capsys):
    with started(project) as runtime:
        assert capsys.readouterr().out.count("Client initialized") == 1
        assert runtime.call("tool", "client_state") == {"ready": True}
        module = next(m for m in runtime.project.executors()["python"].modules.values()
                      if m.__name__ == "lifecycle")
        client = module.client
        assert not client.is_closed
    assert client.is_closed


def test_async_functions_are_awaited(project):
    urls = ["https://a.example/x", "https://b.example/yy"]
    with started(project) as runtime:
        assert runtime.call("tool", "fetch_data", {"urls": urls}) == [
            {"url": urls[0], "length": len(urls[0])}, {"url": urls[1], "length": len(urls[1])}]


def test_return_types(project):
    with started(project) as runtime:
        assert runtime.call("tool", "list_items") == [{"id": 1}, {"id": 2}]
        assert runtime.call("tool", "get_stats") == {"total": 100, "active": 75}
        assert runtime.call("tool", "count_items") == 42


def test_shared_modules(project):
    with started(project) as runtime:
        assert runtime.call("tool", "process_user", {"email": "ada@example.com"}) == {"status": "ok"}
        assert runtime.call("tool", "process_user", {"email": "bad"}) == {"error": "Invalid email"}


def test_error_handling(project):
    with started(project) as runtime:
        assert runtime.call("tool", "safe_divide", {"a": 1, "b": 4}) == {"result": 0.25}
        assert runtime.call("tool", "safe_divide", {"a": 1, "b": 0}) == {"error": "Division by zero"}
        result = runtime.call("tool", "safe_library_call", {"param": "x"})
    assert result["error"] == "Library not installed" and "some_library" in result["message"]


def test_the_cache_pattern(project):
    require_plugin("mxcp_plugins.seed_compat")  # provides SQLite's datetime('now', '-1 hour')
    with started(project) as runtime:
        first = runtime.call("tool", "call_external_api", {"param": "ducks"})
        second = runtime.call("tool", "call_external_api", {"param": "ducks"})
        assert first == second == {"q": "ducks", "answer": 5}
        assert runtime.call("tool", "api_calls") == ["ducks"]  # the second answer came from the cache
        with runtime.database.cursor() as cursor:
            cursor.execute("UPDATE cache SET ts = ts - INTERVAL 2 HOUR")
        assert runtime.call("tool", "call_external_api", {"param": "ducks"}) == first
        assert runtime.call("tool", "api_calls") == ["ducks", "ducks"]  # stale: asked the API again


@needs_extra("pandas")
@pytest.mark.filterwarnings("ignore:For backward compatibility, 'str' dtypes")  # the seed's pandas-2 code
def test_pandas(project):
    with started(project) as runtime:
        analysis = runtime.call("tool", "analyze_dataframe", {"table_name": "users"})
        assert analysis["shape"] == (3, 4) or analysis["shape"] == [3, 4]
        assert analysis["columns"] == ["id", "name", "email", "score"]
        assert analysis["missing_values"] == {"id": 0, "name": 0, "email": 1, "score": 0}
        assert analysis["summary_stats"]["id"]["count"] == 3.0
        assert "score" in analysis["correlations"]["id"]
        head = runtime.call("tool", "pandas_query", {"table_name": "users", "operation": "head"})
        assert [row["name"] for row in head["result"]] == ["Ada", "Bob", "Cy"]
        counts = runtime.call("tool", "pandas_query", {"table_name": "users", "operation": "value_counts"})
        assert counts == {"operation": "value_counts", "result": {"Ada": 1, "Bob": 1, "Cy": 1}}


@needs_extra("ml")
def test_scikit_learn_wrapper(project, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the seed saves and loads models/ relative to the working directory
    with duckdb.connect(str(project / "data" / "db-default.duckdb")) as conn:
        conn.execute("CREATE TABLE points AS SELECT i::DOUBLE AS x, (i % 7)::DOUBLE AS y, "
                     "CASE WHEN i < 50 THEN 0 ELSE 1 END AS label FROM range(100) t(i)")
    with started(project) as runtime:
        trained = runtime.call("tool", "train_classifier", {
            "table_name": "points", "target_column": "label", "feature_columns": ["x", "y"], "model_name": "m1"})
        assert trained["model_name"] == "m1" and trained["test_accuracy"] > 0.8
        assert set(trained["feature_importance"]) == {"x", "y"}
    assert (tmp_path / "models" / "m1.pkl").exists()
    with started(project) as runtime:  # @on_init loads the saved model on the next start
        assert runtime.call("tool", "predict", {"model_name": "m1", "features": {"x": 90.0, "y": 1.0}})[
            "prediction"] == 1
        assert runtime.call("tool", "predict", {"model_name": "nope", "features": {}}) == {
            "error": "Model 'nope' not found"}


def test_df_without_pandas_names_the_extra(project, monkeypatch):
    with started(project) as runtime:
        monkeypatch.setitem(sys.modules, "pandas", None)
        with pytest.raises(MxcpError) as caught:
            runtime.call("tool", "as_frame")
    assert "mxcp-pluggy[pandas]" in str(caught.value)
    assert "Traceback" not in str(caught.value)


@needs_extra("redis")
def test_stateful_wrapper_without_its_secret(project):
    with started(project) as runtime:
        assert runtime.call("tool", "cache_get", {"key": "k"}) == {"error": "Redis not configured"}


def test_plugins(project):
    require_plugin("mxcp_plugins.udf_plugins")  # the plugins/ folder: register_functions modules
    with started(project) as runtime:
        overview = runtime.call("tool", "plugin_overview")
        assert overview["missing"] is None
        assert {"my_plugin", "text_processing"} <= set(overview["available"])
        assert overview["upper"] == "DUCK"
        assert runtime.call("tool", "use_custom_function", {"data": "  Hello   World "}) == {
            "normalized": "hello world"}


def test_missing_secret_gives_a_clear_error(make_project, tmp_path):
    root = make_project(tmp_path / "nosecret", {
        "python/external.py": '''
            from mxcp.runtime import config

            def external(param: str) -> dict:
                api_key = config.get_secret("external_api")["value"]
                return {"key": api_key}
        ''',
        "tools/external.yml": python_tool("external", "external.py", parameters="[{name: param, type: string}]"),
    })
    with started(root) as runtime:
        with pytest.raises(ExecutionError) as caught:
            runtime.call("tool", "external", {"param": "x"})
    assert "secret 'external_api' is not configured for profile 'default'" in str(caught.value)


def test_the_api_outside_an_endpoint_gives_a_clear_error():
    from mxcp.runtime import config, db, get_secret, plugins, reload_duckdb

    for attempt in (lambda: db.execute("SELECT 1"), lambda: config.get_secret("x"), lambda: get_secret("x"),
                    lambda: config.site_config, lambda: config.get_setting("project"), lambda: plugins.list(),
                    lambda: plugins.get("x"), lambda: reload_duckdb(lambda: None)):
        with pytest.raises(OutsideRuntimeError, match="can only be used inside an endpoint call"):
            attempt()
