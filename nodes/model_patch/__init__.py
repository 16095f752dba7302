"""What Enfoque Patch Model installs on a clone of the MODEL, one file per phase of a run: the families
it knows (`families`), the values the phases pass (`state`), before a run (`conditionings`, `checks`),
per attention call (`call`, `plan`, `override`, `blocks`, `concepts`), the run and its record
(`record`, `probe`, `wrappers`), the finished runs (`store`) and their reading (`readout`); `install`
puts the hooks on the clone."""
