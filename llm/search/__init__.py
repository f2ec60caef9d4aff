"""Prior-art search clients: OpenAlex (scholarly works) and PatentsView (the PatentSearch API)."""
