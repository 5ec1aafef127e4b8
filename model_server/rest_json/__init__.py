"""TF Serving's REST JSON: rapidjson's reader and writer, TF Serving's rules, and fast paths."""
