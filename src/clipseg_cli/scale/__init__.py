"""The same run spread out: job-array shards (`sharding`), Ray actors (`ray_batch`), Ray Data (`ray_data`),
and folders watched for new images (`watch`)."""
