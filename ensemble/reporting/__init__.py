"""Tables and figures regenerated from the member store (``ens report``)."""
