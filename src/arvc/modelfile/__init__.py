"""Model files: read RVC's and arvc's (`read`), export a trained generator (`export`), describe one
(`describe`)."""
