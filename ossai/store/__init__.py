"""The model store: pulled and imported checkpoints under `$OSSAI_HOME/models`, one manifest each.

Kept free of torch (imports only `config`, `settings`, `errors`), so listing models is instant; whatever
needs the network stack (`validate`, a checkpoint opener) is passed in by the caller.
"""

from ossai.store.models import (
    ALIASES,
    Manifest,
    get,
    import_model,
    list_models,
    remove,
    resolve,
    show,
)

__all__ = ["ALIASES", "Manifest", "get", "import_model", "list_models", "remove", "resolve", "show"]
