{
  "targets": [
    {
      "target_name": "fdutil",
      "sources": ["native/fdutil.c"]
    }
  ]
}
