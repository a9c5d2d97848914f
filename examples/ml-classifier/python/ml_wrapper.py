"""Pattern 3: wrap scikit-learn. Models live in memory, are saved under models/, and load at start-up."""
import pickle
from pathlib import Path

from flowers import FEATURES, TABLES, ensure_flowers
from mxcp.runtime import db, on_init

# Next to python/, whatever the working directory of the server.
MODEL_DIR = Path(__file__).resolve().parent.parent / "models"

models: dict = {}


def _fit(table_name: str, target_column: str, feature_columns: list, n_estimators: int) -> dict:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    if table_name not in TABLES:
        raise ValueError(f"unknown table '{table_name}' (known: {', '.join(TABLES)})")
    ensure_flowers()
    df = db.execute(f"SELECT * FROM {table_name}").df()
    unknown = [c for c in [target_column, *feature_columns] if c not in df.columns]
    if unknown:
        raise ValueError(f"unknown column(s): {', '.join(unknown)}")
    x_train, x_test, y_train, y_test = train_test_split(
        df[feature_columns], df[target_column], test_size=0.2, random_state=42, stratify=df[target_column]
    )
    model = RandomForestClassifier(n_estimators=n_estimators, random_state=42)
    model.fit(x_train, y_train)
    return {
        "model": model,
        "features": list(feature_columns),
        "train_accuracy": round(float(model.score(x_train, y_train)), 4),
        "test_accuracy": round(float(model.score(x_test, y_test)), 4),
    }


@on_init
def load_models() -> None:
    """Load saved models; train the default model when none was saved yet."""
    ensure_flowers()  # the SQL tool species_counts reads it too
    models.clear()
    if MODEL_DIR.is_dir():
        for file in sorted(MODEL_DIR.glob("*.pkl")):
            with file.open("rb") as handle:
                models[file.stem] = pickle.load(handle)
    if "default" not in models:
        models["default"] = _fit("flowers", "species", FEATURES, n_estimators=25)


def train_classifier(
    table_name: str, target_column: str, feature_columns: list[str], model_name: str = "default",
    n_estimators: int = 50,
) -> dict:
    trained = _fit(table_name, target_column, feature_columns, n_estimators)
    models[model_name] = trained
    MODEL_DIR.mkdir(exist_ok=True)
    with (MODEL_DIR / f"{model_name}.pkl").open("wb") as handle:
        pickle.dump(trained, handle)
    importance = trained["model"].feature_importances_
    return {
        "model_name": model_name,
        "train_accuracy": trained["train_accuracy"],
        "test_accuracy": trained["test_accuracy"],
        "feature_importance": {c: round(float(v), 4) for c, v in zip(feature_columns, importance)},
    }


def predict(model_name: str, features: dict) -> dict:
    import pandas as pd

    if model_name not in models:
        return {"error": f"Model '{model_name}' not found"}
    trained = models[model_name]
    missing = [c for c in trained["features"] if c not in features]
    if missing:
        return {"error": f"missing feature(s): {', '.join(missing)}"}
    frame = pd.DataFrame([{c: features[c] for c in trained["features"]}])
    model = trained["model"]
    probabilities = model.predict_proba(frame)[0]
    return {
        "prediction": str(model.predict(frame)[0]),
        "probabilities": {str(label): round(float(p), 4) for label, p in zip(model.classes_, probabilities)},
    }


def list_models() -> list:
    return [
        {"name": name, "features": trained["features"], "test_accuracy": trained["test_accuracy"]}
        for name, trained in sorted(models.items())
    ]
