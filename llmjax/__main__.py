from llmjax.launch import main

main()
